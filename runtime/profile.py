"""`ember bench --profile`: where a decode step's GPU time goes, kernel by kernel, and a prefill's (the prompt
lengths `--prefill` names, as `ember bench` times them: one sequence, the logits of its last token to the host).

CUPTI, through torch.profiler, records every kernel and copy of the process (TVM's included) with its device
timestamps, so the table is of real durations in a real decode loop, not of kernels timed one at a time. torch is
imported only here, only when asked: the runtime itself never needs it.

Per step: wall time, the time some kernel or copy was running ("busy": the union of their intervals, since with
programmatic dependent launch a kernel starts before the previous one ends and its duration includes waiting
for it), and the rest ("idle": launch gaps and host work between kernels). Kernels are grouped by name with their
calls and microseconds per step (durations as recorded, so overlapping kernels add up to more than busy), then the
kernels the GPU sat idle before ("idle_before": where the launch gaps are).
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .engine import Engine
from .sampler import SamplingParams

GPU_EVENTS = ("kernel", "gpu_memcpy", "gpu_memset")


def _profiler() -> Any:
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError as err:
        raise InputError.about("{--profile} needs torch in this Python (its profiler reads CUPTI): "
                               f"{err}") from None
    if not torch.cuda.is_available():
        raise InputError.about("{--profile} needs a CUDA device that torch can see")
    return lambda: profile(activities=[ProfilerActivity.CUDA])


def short_name(name: str) -> str:
    """Kernel names without template arguments' noise: TVM's `fused_..._kernel` stay, C++ templates shorten."""
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"\(.*\)$", "", name)
    return name if len(name) <= 90 else name[:87] + "..."


def profile_decode(engine: Engine, batch: int, steps: int = 32, prompt: int = 128, top: int = 20,
                   trace: str | None = None) -> list[dict[str, Any]]:
    """Rows: one summary of the decode step at `batch`, then the `top` kernels by time per step."""
    make = _profiler()
    runner = engine.runner
    rng = np.random.default_rng(0)
    seqs = list(range(batch))
    runner.reset()
    for s in seqs:
        runner.add_sequence(s)
    logits = runner.prefill(seqs, [rng.integers(0, runner.vocab_size, size=prompt).astype(np.int32) for _ in seqs])
    tokens = np.argmax(logits, axis=-1).astype(np.int32)
    if runner.has_device_sampler:  # the loop `ember bench` times: greedy sampling on the device, ids to the host
        buf = runner.set_sampling([(SamplingParams(), 0, s) for s in seqs])

        def step(tokens: np.ndarray) -> np.ndarray:
            return runner.decode_sample(seqs, tokens, buf)
    else:
        def step(tokens: np.ndarray) -> np.ndarray:
            return np.argmax(runner.decode(seqs, tokens, reuse=True), axis=-1).astype(np.int32)
    for _ in range(4):  # warm-up (CUDA graph capture, first launches)
        tokens = step(tokens)
    with make() as prof:
        start = time.perf_counter()
        for _ in range(steps):
            tokens = step(tokens)
        wall = time.perf_counter() - start
    for s in seqs:
        runner.remove_sequence(s)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(trace) if trace else Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents", [])
    return summarize(events, steps, wall, batch, top, engine.manifest.name, engine.manifest.quantization)


def profile_prefill(engine: Engine, tokens: int, repeats: int = 8, top: int = 20,
                    trace: str | None = None) -> list[dict[str, Any]]:
    """Rows: one summary of a `tokens`-long prefill (a "step" here), then the `top` kernels by time per prefill."""
    make = _profiler()
    runner = engine.runner
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, runner.vocab_size, size=tokens).astype(np.int32) for _ in range(repeats + 2)]

    def once(ids: np.ndarray) -> None:
        runner.reset()
        runner.add_sequence(0)
        runner.prefill([0], [ids])
        runner.remove_sequence(0)

    for ids in prompts[:2]:  # warm-up
        once(ids)
    with make() as prof:
        start = time.perf_counter()
        for ids in prompts[2:]:
            once(ids)
        wall = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(trace) if trace else Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents", [])
    rows = summarize(events, repeats, wall, 1, top, engine.manifest.name, engine.manifest.quantization,
                     kind="prefill")
    rows[0]["tokens"] = tokens
    return [{**row, "tokens": tokens} if "kernel" in row or "idle_before" in row else row for row in rows]


def summarize(events: list[dict[str, Any]], steps: int, wall_s: float, batch: int, top: int, model: str,
              quant: str, kind: str = "decode") -> list[dict[str, Any]]:
    by_name: dict[str, list[float]] = defaultdict(list)
    spans = []
    named: list[tuple[float, float, str]] = []
    for e in events:
        if e.get("cat") in GPU_EVENTS and e.get("ph") == "X":
            name = short_name(str(e.get("name", "?")))
            by_name[name].append(float(e.get("dur", 0.0)))
            spans.append((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))))
            named.append((*spans[-1], name))
    busy = covered(spans)
    first, last = (min(s for s, _ in spans), max(t for _, t in spans)) if spans else (0.0, 0.0)
    summary = {"profile": kind, "model": model, "quant": quant, "batch": batch, "steps": steps,
               "step_ms": round(wall_s / steps * 1e3, 3), "gpu_busy_ms_per_step": round(busy / steps / 1e3, 3),
               "gpu_span_ms_per_step": round((last - first) / steps / 1e3, 3),
               "launches_per_step": round(sum(len(d) for d in by_name.values()) / steps, 1)}
    summary["gpu_idle_fraction"] = round(1 - summary["gpu_busy_ms_per_step"] / summary["step_ms"], 3) \
        if summary["step_ms"] else None
    rows = [summary]
    total = sum(sum(d) for d in by_name.values())
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    for name, durs in ranked[:top]:
        rows.append({"kernel": name, "calls_per_step": round(len(durs) / steps, 2),
                     "us_per_step": round(sum(durs) / steps, 1), "us_per_call": round(float(np.median(durs)), 2),
                     "share": round(sum(durs) / total, 4) if total else 0.0})
    gaps = idle_before(named)
    for name, us in sorted(gaps.items(), key=lambda kv: -kv[1])[:GAP_ROWS]:
        rows.append({"idle_before": name, "us_per_step": round(us / steps, 1)})
    return rows


GAP_ROWS = 6  # the kernels most often waited for: where the idle time of a step sits


def idle_before(named: list[tuple[float, float, str]]) -> dict[str, float]:
    """Idle GPU time (no kernel or copy running) right before each kernel started, summed by kernel name: the
    launches that the GPU waited for. The first event of the trace has none."""
    out: dict[str, float] = defaultdict(float)
    reach = None
    for start, end, name in sorted(named):
        if reach is not None and start > reach:
            out[name] += start - reach
        reach = end if reach is None else max(reach, end)
    return dict(out)


def covered(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


__all__ = ["covered", "idle_before", "profile_decode", "summarize", "short_name"]
