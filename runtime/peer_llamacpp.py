"""Peer for `ember bench --peer llama.cpp`: llama.cpp's `llama-bench` on a GGUF file, in the same run.

llama-bench runs one test per prompt length (`-p`: prompt tokens / time) and one prompt-then-generate test
(`-pg 128,N`: a 128-token prompt, then N tokens). ember's decode figure is N tokens after a 128-token prompt,
prefill excluded, so the peer's is N / (time of pg 128,N - time of pp 128); pp 128 always runs for that (and
for TTFT). `-n 0` skips llama-bench's decode-from-an-empty-context test, which ember does not measure.
Rows come out in the format of `bench.BenchResult.rows` (engine "llama.cpp").
"""
from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import InputError

BINARY = "llama-bench"
PROMPT = 128  # the prompt before the decode measurement, as in ember's bench


def find_llama_bench(explicit: str | None = None) -> str:
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise InputError(f"--llama-bench {explicit}: no such file")
        return str(path)
    found = shutil.which(BINARY)
    if found is None:
        raise InputError(f"{BINARY} is not on PATH: pass --llama-bench PATH (`bash benchmarks/cpu.sh build` makes one)")
    return found


def llama_bench_command(binary: str, gguf: str, threads: int, prefill: list[int], steps: int,
                        repeats: int) -> list[str]:  # fmt: skip
    lengths = sorted(set(prefill) | {PROMPT})
    return [binary, "-m", gguf, "-t", str(threads), "-p", ",".join(map(str, lengths)), "-n", "0",
            "-pg", f"{PROMPT},{steps}", "-r", str(max(1, repeats)), "-o", "jsonl"]  # fmt: skip


def parse_llama_bench(lines: Iterable[str], prefill: list[int]) -> list[dict[str, Any]]:
    """llama-bench's JSON lines -> ember's bench rows: prefill_ppN_tok_s for each asked length, ttft_128_ms and
    decode_b1_tok_s (after a 128-token prompt)."""
    tests = [json.loads(line) for line in lines if line.lstrip().startswith("{")]
    if not tests:
        return []
    first = tests[0]
    base = {"engine": "llama.cpp", "model": Path(str(first.get("model_filename", ""))).name,
            "quant": first.get("model_type", ""), "device": "cpu", "weights": "gguf",
            "threads": first.get("n_threads"), "build": first.get("build_commit"), "source": "llama-bench"}  # fmt: skip
    at_start = [t for t in tests if not t.get("n_depth")]
    pp = {t["n_prompt"]: t for t in at_start if t["n_gen"] == 0 and t["n_prompt"] > 0}
    pg = [t for t in at_start if t["n_prompt"] == PROMPT and t["n_gen"] > 0]
    rows = [{**base, "metric": f"prefill_pp{n}_tok_s", "value": round(n * 1e9 / pp[n]["avg_ns"], 1)}
            for n in prefill if n in pp]  # fmt: skip
    if PROMPT in pp:
        rows.append({**base, "metric": f"ttft_{PROMPT}_ms", "value": round(pp[PROMPT]["avg_ns"] / 1e6, 2)})
        for test in pg:
            decode_ns = test["avg_ns"] - pp[PROMPT]["avg_ns"]
            if decode_ns > 0:
                rows.append({**base, "metric": "decode_b1_tok_s", "value": round(test["n_gen"] * 1e9 / decode_ns, 1),
                             "steps": test["n_gen"]})  # fmt: skip
    if not pg:  # `-n N` runs only (benchmarks/gpu.sh): N tokens from an empty context, no prompt before them
        for test in at_start:
            if test["n_prompt"] == 0 and test["n_gen"] > 0:
                rows.append({**base, "metric": "decode_b1_tok_s", "value": round(test["n_gen"] * 1e9 / test["avg_ns"], 1),
                             "steps": test["n_gen"], "prompt": 0})  # fmt: skip
    return rows


def parse_llama_bench_models(lines: Iterable[str]) -> list[dict[str, Any]]:
    """parse_llama_bench for a file that holds the runs of several GGUF files, one model at a time, every prompt
    length it ran."""
    by_model: dict[str, list[str]] = {}
    for line in lines:
        if line.lstrip().startswith("{"):
            by_model.setdefault(str(json.loads(line).get("model_filename", "")), []).append(line)
    rows: list[dict[str, Any]] = []
    for model_lines in by_model.values():
        lengths = sorted({t["n_prompt"] for t in map(json.loads, model_lines) if t["n_gen"] == 0 and t["n_prompt"] > 0})
        rows += parse_llama_bench(model_lines, lengths)
    return rows


def parse_batched_bench(tests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """llama-batched-bench's JSON objects -> decode_b{pl}_tok_s rows: `speed_tg` is the generated tokens of all pl
    sequences over their time, after a prompt of `pp` tokens each (gpu.sh adds "model", the quant)."""
    rows = []
    for t in tests:
        if "pl" not in t or "speed_tg" not in t:
            continue
        rows.append({"engine": "llama.cpp", "model": str(t.get("model", "")), "quant": str(t.get("model", "")),
                     "weights": "gguf", "source": "batched-bench", "metric": f"decode_b{int(t['pl'])}_tok_s",
                     "value": round(float(t["speed_tg"]), 1), "steps": t.get("tg"), "prompt": t.get("pp")})
    return rows


def run_llama_bench(binary: str, gguf: str, threads: int, prefill: list[int], steps: int, repeats: int,
                    timeout: float = 1800) -> list[dict[str, Any]]:  # fmt: skip
    """Run llama-bench and return its rows, or one {"engine", "error"} row saying why there are none."""
    if not Path(gguf).is_file():
        return [{"engine": "llama.cpp", "error": f"{gguf}: no such GGUF file"}]
    cmd = llama_bench_command(binary, gguf, threads, prefill, steps, repeats)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [{"engine": "llama.cpp", "error": f"{binary}: {err}"}]
    try:
        rows = parse_llama_bench(done.stdout.splitlines(), prefill)
    except (ValueError, KeyError, TypeError) as err:
        return [{"engine": "llama.cpp", "error": f"{binary}: unreadable output ({type(err).__name__}: {err})"}]
    if done.returncode != 0 or not rows:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}, no results"]
        return rows or [{"engine": "llama.cpp", "error": tail[0][:300]}]
    return rows
