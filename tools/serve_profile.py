#!/usr/bin/env python3
"""Where a serving step's time goes, without HTTP: N concurrent streams through AsyncEngine (random prompt ids,
greedy, ignore_eos), host or device sampling. Per run, one JSON line: the decode rate over the window where every
stream decodes (as tools/serve_load.py computes it), and over the steps of that window the median step wall time,
the part of it inside the runner's model calls (prefill, decode, decode_sample_rows, sample_rows: synchronous,
so GPU time plus launches), the rest of the step (Python: scheduling, rows, add_token, outputs) and the gap between
steps (the loop, the inbox). With --profile, the top functions of the engine thread's steps by own time
(cProfile; it slows what it measures, so its run reports no rates).

    python tools/serve_profile.py ARTIFACT [--device cuda] [--streams 1,16,64] [--profile 64]
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import time

import numpy as np

MODEL_CALLS = ("prefill", "decode", "decode_sample_rows", "sample_rows")


class StepClock:
    """Wraps the core's step and the runner's model calls: per step (start, wall, model time, model calls)."""

    def __init__(self, core, profiler: cProfile.Profile | None = None) -> None:
        self.steps: list[tuple[float, float, float, int]] = []
        self._model, self._calls = 0.0, 0
        runner = core.runner
        for name in MODEL_CALLS:
            setattr(runner, name, self._timed(getattr(runner, name)))
        step = core.step

        def timed_step() -> None:
            self._model, self._calls = 0.0, 0
            t0 = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            try:
                step()
            finally:
                if profiler is not None:
                    profiler.disable()
                self.steps.append((t0, time.perf_counter() - t0, self._model, self._calls))

        core.step = timed_step

    def _timed(self, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._model += time.perf_counter() - t0
                self._calls += 1
        return call


async def load(engine, streams: int, prompt: int, max_tokens: int, vocab: int) -> tuple[list[list[float]], float]:
    rng = np.random.default_rng(streams)

    async def one(ids: list[int]) -> list[float]:
        times = []
        async for out in engine.generate(ids, max_tokens=max_tokens, temperature=0.0, ignore_eos=True):
            times += [time.perf_counter()] * len(out.token_ids)
        return times

    t0 = time.perf_counter()
    runs = await asyncio.gather(*(one(rng.integers(3, vocab, prompt).tolist()) for _ in range(streams)))
    return runs, time.perf_counter() - t0


def measure(args, device_sampling: bool, streams: int, profile: bool) -> dict:
    from ember.runtime.serving.async_engine import AsyncEngine

    engine = AsyncEngine.load(args.artifact, device=args.device, max_seqs=args.max_batch, context_length=args.context,
                              kv_tokens=args.max_batch * args.context, prefix_cache=False,
                              device_sampling=device_sampling)
    try:
        vocab = min(engine.runner.vocab_size, args.vocab)
        asyncio.run(load(engine, 1, 8, 4, vocab))  # warm up
        profiler = cProfile.Profile() if profile else None
        clock = StepClock(engine.core, profiler)
        runs, wall = asyncio.run(load(engine, streams, args.prompt, args.max_tokens, vocab))
    finally:
        engine.shutdown()
    row = {"sampling": "device" if device_sampling else "host", "streams": streams, "prompt": args.prompt,
           "max_tokens": args.max_tokens, "tokens": sum(map(len, runs)), "wall_s": round(wall, 3)}
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        row["profile"] = text.getvalue().splitlines()
        return row
    lo, hi = max(r[0] for r in runs), min(r[-1] for r in runs)
    inside = sum(1 for r in runs for t in r if lo < t <= hi)
    row["decode_tok_s"] = round(inside / (hi - lo), 1) if hi > lo else None
    window = [s for s in clock.steps if lo <= s[0] and s[0] + s[1] <= hi]
    if len(window) >= 3:
        gaps = [b[0] - (a[0] + a[1]) for a, b in zip(window, window[1:])]
        ms = lambda v: round(1e3 * statistics.median(v), 3)  # noqa: E731
        row.update(window_steps=len(window), step_ms=ms([s[1] for s in window]), model_ms=ms([s[2] for s in window]),
                   python_in_step_ms=ms([s[1] - s[2] for s in window]), gap_ms=ms(gaps),
                   model_calls_per_step=statistics.median(s[3] for s in window))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--streams", default="1,16,64")
    ap.add_argument("--sampling", default="host,device")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=128000)
    ap.add_argument("--profile", type=int, default=None, help="also profile the device path at this many streams")
    args = ap.parse_args()
    for mode in args.sampling.split(","):
        for n in (int(s) for s in args.streams.split(",")):
            print(json.dumps(measure(args, mode == "device", n, False)), flush=True)
    if args.profile:
        print(json.dumps(measure(args, True, args.profile, True)), flush=True)


if __name__ == "__main__":
    main()
