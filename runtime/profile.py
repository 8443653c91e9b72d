"""`ember bench --profile`: where a decode step's GPU time goes, kernel by kernel.

CUPTI, through torch.profiler, records every kernel and copy of the process (TVM's included) with its device
timestamps, so the table is of real durations in a real decode loop, not of kernels timed one at a time. torch is
imported only here, only when asked: the runtime itself never needs it.

Per step: wall time, the sum of kernel and copy durations ("busy"), and the rest ("idle": launch gaps and host
work between kernels). Kernels are grouped by name with their calls and microseconds per step.
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
    tokens = [int(t) for t in np.argmax(logits, axis=-1)]
    for _ in range(4):  # warm-up (CUDA graph capture, first launches)
        logits = runner.decode(seqs, tokens, reuse=True)
    with make() as prof:
        start = time.perf_counter()
        for _ in range(steps):
            tokens = [int(t) for t in np.argmax(logits, axis=-1)]
            logits = runner.decode(seqs, tokens, reuse=True)
        wall = time.perf_counter() - start
    for s in seqs:
        runner.remove_sequence(s)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(trace) if trace else Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents", [])
    return summarize(events, steps, wall, batch, top, engine.manifest.name, engine.manifest.quantization)


def summarize(events: list[dict[str, Any]], steps: int, wall_s: float, batch: int, top: int, model: str,
              quant: str) -> list[dict[str, Any]]:
    by_name: dict[str, list[float]] = defaultdict(list)
    spans = []
    for e in events:
        if e.get("cat") in GPU_EVENTS and e.get("ph") == "X":
            by_name[short_name(str(e.get("name", "?")))].append(float(e.get("dur", 0.0)))
            spans.append((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))))
    busy = sum(sum(d) for d in by_name.values())
    first, last = (min(s for s, _ in spans), max(t for _, t in spans)) if spans else (0.0, 0.0)
    summary = {"profile": "decode", "model": model, "quant": quant, "batch": batch, "steps": steps,
               "step_ms": round(wall_s / steps * 1e3, 3), "gpu_busy_ms_per_step": round(busy / steps / 1e3, 3),
               "gpu_span_ms_per_step": round((last - first) / steps / 1e3, 3),
               "launches_per_step": round(sum(len(d) for d in by_name.values()) / steps, 1)}
    summary["gpu_idle_fraction"] = round(1 - summary["gpu_busy_ms_per_step"] / summary["step_ms"], 3) \
        if summary["step_ms"] else None
    rows = [summary]
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    for name, durs in ranked[:top]:
        rows.append({"kernel": name, "calls_per_step": round(len(durs) / steps, 2),
                     "us_per_step": round(sum(durs) / steps, 1), "us_per_call": round(float(np.median(durs)), 2),
                     "share": round(sum(durs) / busy, 4) if busy else 0.0})
    return rows


__all__ = ["profile_decode", "summarize", "short_name"]
