"""Time to first token with and without the prefix cache: requests that share a long system prompt, served one
after another by an AsyncEngine (no HTTP). Prints one JSON line per setting.

    python tools/prefix_cache_bench.py compiled/smollm2-cpu [--system-tokens 1000] [--requests 6]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from ember.runtime.serving.async_engine import AsyncEngine

WORDS = ("the engine keeps pages of keys and values for every sequence it serves and shares them when prompts "
         "begin the same way so a long system prompt is computed once").split()


def system_prompt(engine: AsyncEngine, tokens: int) -> str:
    text, i = "You are a careful assistant. Follow these rules.", 0
    while len(engine.encode_chat([{"role": "system", "content": text}])) < tokens:
        text += f" Rule {i}: " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) + "."
        i += 1
    return text


async def ttft(engine: AsyncEngine, ids: list[int], max_tokens: int) -> tuple[float, list[int]]:
    start, first, out = time.perf_counter(), None, []
    async for chunk in engine.generate(ids, max_tokens=max_tokens, temperature=0):
        if first is None and chunk.token_ids:
            first = time.perf_counter() - start
        out += chunk.token_ids
    return first if first is not None else time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    outputs = {}
    for cached in (False, True):
        engine = AsyncEngine.load(args.artifact, max_seqs=4, context_length=2048, prefix_cache=cached)
        try:
            system = system_prompt(engine, args.system_tokens)
            prompts = [engine.encode_chat([{"role": "system", "content": system},
                                           {"role": "user", "content": f"Question {i}: what is rule {i}?"}])
                       for i in range(args.requests)]
            times, outs = [], []
            for ids in prompts:
                t, out = asyncio.run(ttft(engine, ids, args.max_tokens))
                times.append(t)
                outs.append(out)
            outputs[cached] = outs
            stats = engine.stats()
        finally:
            engine.shutdown()
        print(json.dumps({"prefix_cache": cached, "prompt_tokens": len(prompts[0]), "first_ttft_s": round(times[0], 4),
                          "later_ttft_median_s": round(statistics.median(times[1:]), 4),
                          "hit_tokens": stats["prefix_cache_hit_tokens"]}), flush=True)
    print(json.dumps({"same_outputs": outputs[False] == outputs[True]}))


if __name__ == "__main__":
    main()
