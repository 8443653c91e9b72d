"""`ember bench`: prefill, TTFT and decode speed of an artifact, optionally beside a peer in the same run.

Decode is (N - 1) / (T_N - T_1) over N greedy tokens after a 128-token prompt (EOS ignored), so prefill never
leaks into it (decode_ctx{N}_b1: the same at batch 1 after an N-token prompt, `--context`); prefill is prompt tokens / time to the first logits. Each figure is the best of `repeats`
runs after a warm-up. Figures of random-weight artifacts are labelled as such.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .engine import Engine
from .sampler import SamplingParams

GREEDY = SamplingParams()


@dataclass
class BenchResult:
    name: str
    device: str
    quantization: str
    weights: str
    prefill: dict[int, float] = field(default_factory=dict)  # prompt length -> tok/s
    ttft_ms: float = 0.0  # 128-token prompt
    decode: dict[int, float] = field(default_factory=dict)  # batch -> tok/s (all sequences together)
    tpot_ms: dict[int, tuple[float, float]] = field(default_factory=dict)  # batch -> (p50, p99) of one step
    weight_bytes: int = 0  # what every decode step reads: all weights but the experts' (MoE) or all of them
    expert_bytes: int = 0  # the stacked expert weights of MoE blocks; a step reads the selected experts' share
    experts: tuple[int, int] = (0, 0)  # (experts per block, experts per token)
    copy_GBps: float | None = None  # device copy bandwidth measured in the same run (read + write)
    memory_used_bytes: int | None = None  # on the GPU after the decode runs (largest batch)
    context_decode: dict[int, float] = field(default_factory=dict)  # prompt length -> batch-1 decode tok/s after it

    def step_bytes(self, batch: int) -> int:
        """Weight bytes a decode step of `batch` sequences reads: every dense weight, and of each MoE block the
        experts its tokens select (expected count under uniform routing: E (1 - (1 - k / E) ^ batch))."""
        experts, top_k = self.experts
        if not self.expert_bytes or not experts:
            return self.weight_bytes + self.expert_bytes
        share = 1.0 - (1.0 - top_k / experts) ** batch
        return self.weight_bytes + int(self.expert_bytes * share)

    def rows(self) -> list[dict[str, Any]]:
        base = {"engine": "ember", "model": self.name, "quant": self.quantization, "device": self.device,
                "weights": self.weights}
        out = [{**base, "metric": f"prefill_pp{n}_tok_s", "value": round(v, 1)} for n, v in self.prefill.items()]
        out.append({**base, "metric": "ttft_128_ms", "value": round(self.ttft_ms, 2)})
        for batch, v in self.decode.items():
            row = {**base, "metric": f"decode_b{batch}_tok_s", "value": round(v, 1)}
            if batch in self.tpot_ms:
                row["tpot_p50_ms"], row["tpot_p99_ms"] = (round(t, 3) for t in self.tpot_ms[batch])
            if self.weight_bytes:
                steps_per_s = v / batch
                step_bytes = self.step_bytes(batch)
                row["weight_bytes_per_step"] = step_bytes
                row["weight_GBps"] = round(step_bytes * steps_per_s / 1e9, 1)
                if self.copy_GBps:
                    row["copy_GBps"] = round(self.copy_GBps, 1)
                    row["roofline_fraction"] = round(step_bytes * steps_per_s / 1e9 / self.copy_GBps, 3)
            if self.memory_used_bytes is not None:
                row["gpu_memory_used_GB"] = round(self.memory_used_bytes / 1e9, 2)
            out.append(row)
        for n, v in self.context_decode.items():
            out.append({**base, "metric": f"decode_ctx{n}_b1_tok_s", "value": round(v, 1), "context": n})
        return out


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_prefill(engine: Engine, length: int, repeats: int, rng: np.random.Generator) -> float:
    runner = engine.runner
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        ids = rng.integers(0, runner.vocab_size, size=length).astype(np.int32)
        runner.reset()
        runner.add_sequence(0)
        best = min(best, _timed(lambda: runner.prefill([0], [ids])))
        runner.remove_sequence(0)
    return best


def measure_decode(engine: Engine, batch: int, steps: int, prompt: int, rng: np.random.Generator
                   ) -> tuple[float, np.ndarray]:
    """(tokens per second over all `batch` sequences, the time of each step in seconds), greedy, EOS ignored.
    Artifacts with the device sampler (cuda) pick the tokens on the device: only their ids reach the host."""
    runner = engine.runner
    seqs = list(range(batch))
    runner.reset()
    for s in seqs:
        runner.add_sequence(s)
    prompts = [rng.integers(0, runner.vocab_size, size=prompt).astype(np.int32) for _ in seqs]
    logits = runner.prefill(seqs, prompts)
    tokens = np.argmax(logits, axis=-1).astype(np.int32)
    stamps = np.empty(steps)
    if runner.has_device_sampler:
        for s, p in zip(seqs, prompts):
            runner.reset_penalties(s, p)
        buf = runner.set_sampling([(GREEDY, 0, s) for s in seqs])
        for i in range(steps):
            stamps[i] = time.perf_counter()
            tokens = runner.decode_sample(seqs, tokens, buf)
    else:
        for i in range(steps):
            stamps[i] = time.perf_counter()
            tokens = np.argmax(runner.decode(seqs, tokens, reuse=True), axis=-1)
    for s in seqs:
        runner.remove_sequence(s)
    return batch * (steps - 1) / (stamps[-1] - stamps[0]), np.diff(stamps)


def copy_bandwidth(engine: Engine, nbytes: int = 1 << 30, repeats: int = 5) -> float | None:
    """Bytes per second of a device-to-device copy (read + write counted), best of `repeats`; None on the cpu."""
    if engine.artifact.manifest.target.kind == "cpu":
        return None
    tvm = engine.runner._tvm
    dev = engine.artifact.device
    src = tvm.runtime.empty((nbytes // 4,), "float32", dev)
    dst = tvm.runtime.empty((nbytes // 4,), "float32", dev)
    best = float("inf")
    for _ in range(repeats + 1):
        dev.sync()
        start = time.perf_counter()
        src.copyto(dst)
        dev.sync()
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * nbytes / best


def device_memory_used(engine: Engine) -> int | None:
    """Bytes in use on the GPU now (total - available, as the driver reports them); None where not reported."""
    dev = engine.artifact.device
    try:
        total, free = int(dev.total_global_memory), int(dev.available_global_memory)
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None
    return total - free if total > 0 and free >= 0 else None


def run_bench(engine: Engine, device: str, prefill_lengths: list[int], batches: list[int], steps: int,
              repeats: int = 3, seed: int = 0, contexts: list[int] = ()) -> BenchResult:
    """`contexts`: prompt lengths before a batch-1 decode measurement each (decode_ctx{N}_b1_tok_s); the engine's
    cache must hold N + steps tokens (needed_context)."""
    rng = np.random.default_rng(seed)
    m = engine.manifest
    experts, top_k = _experts(m.config)
    stacked = [p for p in m.params if experts and len(p.shape) == 3 and p.shape[0] == experts]
    result = BenchResult(name=m.name, device=device, quantization=m.quantization, weights=m.weights,
                         weight_bytes=sum(_nbytes(p.shape, p.dtype) for p in m.params if p not in stacked),
                         expert_bytes=sum(_nbytes(p.shape, p.dtype) for p in stacked), experts=(experts, top_k))
    for n in prefill_lengths:
        result.prefill[n] = n / measure_prefill(engine, n, repeats, rng)
    result.ttft_ms = measure_prefill(engine, 128, repeats, rng) * 1e3
    measure_decode(engine, 1, 8, DECODE_PROMPT, rng)  # warm-up
    for batch in batches:
        runs = [measure_decode(engine, batch, steps, DECODE_PROMPT, rng) for _ in range(max(1, repeats - 1))]
        best, intervals = max(runs, key=lambda run: run[0])
        result.decode[batch] = best
        result.tpot_ms[batch] = (float(np.percentile(intervals, 50) * 1e3), float(np.percentile(intervals, 99) * 1e3))
    for n in contexts:
        runs = [measure_decode(engine, 1, steps, n, rng)[0] for _ in range(max(1, repeats - 1))]
        result.context_decode[n] = max(runs)
    result.memory_used_bytes = device_memory_used(engine)
    bandwidth = copy_bandwidth(engine)
    result.copy_GBps = bandwidth / 1e9 if bandwidth else None
    return result


DECODE_PROMPT = 128  # the prompt before the decode measurements at each batch size


def needed_context(prefill_lengths: list[int], steps: int, contexts: list[int] = ()) -> int:
    """Tokens per sequence the KV cache must hold: the longest prompt timed, or a prompt and every decode step
    after it (and the first token's slack)."""
    return max(max(prefill_lengths, default=0), max([DECODE_PROMPT, *contexts]) + steps + 8)


def _experts(config: dict[str, Any]) -> tuple[int, int]:
    """(experts per MoE block, experts per token) of a model config; (0, 0) for a dense model."""
    experts = int(config.get("num_local_experts") or config.get("num_experts") or 0)
    return (experts, int(config.get("num_experts_per_tok") or 0)) if experts else (0, 0)


def _nbytes(shape: list[int], dtype: str) -> int:
    bits = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "uint32": 32, "int32": 32}
    return int(np.prod(shape)) * bits.get(dtype, 16) // 8


def run_peer(peer: str, manifest_config: dict[str, Any], device: str, prefill_lengths: list[int], steps: int,
             timeout: float = 1200) -> list[dict[str, Any]]:
    """Run a peer in a subprocess (it imports torch; this process stays runtime-only) and return its rows."""
    cmd = [sys.executable, "-m", "ember.runtime.peer_hf", "--config", json.dumps(manifest_config),
           "--device", device, "--prefill", ",".join(map(str, prefill_lengths)), "--steps", str(steps),
           "--mode", peer.split(":", 1)[1] if ":" in peer else "eager"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 and not rows:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        rows = [{"engine": peer, "error": tail[0][:300]}]
    return rows


def ratio_rows(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ember / peer for every metric both measured (higher is better, except TTFT where peer / ember)."""
    peer = {r["metric"]: r for r in theirs if "metric" in r}
    out = []
    for row in ours:
        other = peer.get(row["metric"])
        if other and other.get("value"):
            better = other["value"] / row["value"] if row["metric"].startswith("ttft") else row["value"] / other["value"]
            out.append({"metric": row["metric"], "ember": row["value"], "peer": other["engine"],
                        "peer_value": other["value"], "speedup": round(better, 2)})
    return out


__all__ = ["BenchResult", "run_bench", "run_peer", "ratio_rows", "asdict"]
