"""Decode throughput through an OpenAI-compatible server (`ember serve`): for each concurrency, that many
streaming completions at once (random token-id prompts, greedy, ignore_eos so each runs to max_tokens); prints
one JSON line per concurrency. Standard library only (asyncio sockets, chunked SSE), so it runs on a bare box.

    python tools/serve_load.py --url http://127.0.0.1:8000 --streams 1,16,64 --prompt 128 --max-tokens 128
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from urllib.parse import urlparse


async def stream(host: str, port: int, body: dict) -> tuple[float, list[float], int]:
    """The start time, the arrival time of each text chunk, and the tokens of one streamed completion."""
    reader, writer = await asyncio.open_connection(host, port)
    data = json.dumps(body).encode()
    start = time.perf_counter()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data))
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"server answered {status.decode().strip()}: {(await reader.read(2000)).decode()}")
    times: list[float] = []
    tokens = 0
    while line := await reader.readline():  # chunk-size lines and blank lines are skipped: only data lines count
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0].get("text") is not None:
            times.append(time.perf_counter())
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    writer.close()
    return start, times or [start], tokens


async def level(host: str, port: int, streams: int, prompt: int, max_tokens: int, vocab: int,
                logprobs: int | None = None, label: str | None = None) -> dict:
    rng = random.Random(streams)
    bodies = [{"prompt": [rng.randrange(3, vocab) for _ in range(prompt)], "max_tokens": max_tokens,
               "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
              for _ in range(streams)]
    if logprobs is not None:
        for body in bodies:
            body["logprobs"] = logprobs
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(stream(host, port, b) for b in bodies))
    wall = time.perf_counter() - t0
    tokens = sum(r[2] for r in runs)
    ttft = sorted(r[1][0] - r[0] for r in runs)
    # decode rate: the chunks (one token each) that arrived while every stream was decoding, over that window
    lo, hi = max(r[1][0] for r in runs), min(r[1][-1] for r in runs)
    window = hi - lo
    inside = sum(1 for r in runs for t in r[1] if lo < t <= hi)
    extra = {"label": label} if label else {}
    if logprobs is not None:
        extra["logprobs"] = logprobs
    return {"engine": "ember serve", **extra, "streams": streams, "prompt_tokens": prompt, "max_tokens": max_tokens,
            "completion_tokens": tokens, "all_full": all(r[2] == max_tokens for r in runs),
            "wall_s": round(wall, 3), "tok_s": round(tokens / wall, 1),
            "decode_tok_s": round(inside / window, 1) if window > 0 else None,
            "ttft_p50_s": round(statistics.median(ttft), 4), "ttft_max_s": round(ttft[-1], 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--streams", default="1,16,64")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=32000, help="prompt ids are drawn below this")
    ap.add_argument("--logprobs", type=int, default=None, help="ask each token's log-probability and the k likeliest")
    ap.add_argument("--label", default=None, help="a name for the rows (e.g. the server's sampling)")
    args = ap.parse_args()
    url = urlparse(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    asyncio.run(level(host, port, 1, 8, 4, args.vocab))  # warm up
    for n in (int(s) for s in args.streams.split(",")):
        row = asyncio.run(level(host, port, n, args.prompt, args.max_tokens, args.vocab, args.logprobs, args.label))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
