#!/usr/bin/env python3
"""LongRoPE's chunked prefill on a GPU against the cpu build's chunked prefill (the same chunks).

A one-pass prefill past original_max_position_embeddings rotates every position with the long factors; a chunked
one rotates the first chunks (all within it) with the short ones, as transformers does call by call, so the two
differ by design (0.10 of the logit scale on gemv_parity's phi3_longrope) and the GPU's chunks compare with the
cpu's chunks.

    python tools/longrope_chunked_check.py reference BUILD_DIR     (here: BUILD_DIR/cpu -> BUILD_DIR/chunked_cpu.npy)
    python tools/longrope_chunked_check.py check BUILD_DIR         (on the GPU: BUILD_DIR/cuda against it)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

CHUNK, LENGTH = 16, 100


def _prompt(vocab: int) -> list[int]:
    return np.random.default_rng(11).integers(0, vocab, size=LENGTH).tolist()


def main() -> int:
    import ember

    what, root = sys.argv[1], Path(sys.argv[2])
    if what == "reference":
        cpu = ember.load(root / "cpu", device="cpu", prefill_chunk_size=CHUNK)
        np.save(root / "chunked_cpu.npy", cpu.score(_prompt(cpu.manifest.vocab_size)))
        return 0
    ref = np.load(root / "chunked_cpu.npy")
    gpu = ember.load(root / "cuda", device="cuda", prefill_chunk_size=CHUNK)
    out = gpu.score(_prompt(gpu.manifest.vocab_size))
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    row = {"check": "longrope_chunked_prefill_vs_cpu_chunked", "chunk": CHUNK, "tokens": LENGTH,
           "max_err_of_scale": err, "top1_agree": float((out.argmax(-1) == ref.argmax(-1)).mean()), "ok": err < 5e-2}
    print(json.dumps(row))
    return 0 if row["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
