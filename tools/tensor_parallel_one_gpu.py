#!/usr/bin/env python3
"""Tensor-parallel cuda builds on ONE GPU: every shard's functions run one after the other on the same device (a
thread per shard, as ember.runtime.tensor_parallel.ShardedRunner does on cpu), the all-reduce and all-gather
summed / concatenated on the device (torch over DLPack; numpy on the host when torch has no CUDA), against the
unsharded cuda build of the same weights. It checks the sharded kernels (shard-local shapes of every GEMV/GEMM,
attention over each shard's own KV heads, the vocabulary-parallel embedding and head) without NCCL or a second GPU.

Here:          python tools/tensor_parallel_one_gpu.py build DIR
               a tiny HF llama (8 query / 4 kv heads) compiled for cuda:sm_90 per scheme: unsharded, and
               --tensor-parallel 2 and 4 with EMBER_TP_COLLECTIVES=host (the collectives call ember's host
               functions, which this script points at the device). TP_CHECK_TARGET=cpu builds for cpu instead,
               and `check` then runs there: a dry run of this script without a GPU
On the GPU:    python tools/tensor_parallel_one_gpu.py check DIR
               per scheme and shard count: a prompt prefilled in chunks of 5 (every position's logits), 16
               teacher-forced decode1 steps, then 3 sequences decoded together for 8 steps; max |sharded -
               unsharded| over the logit scale, top-1 agreement. One JSON line each; exit 1 if a check fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CONFIG = {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
          "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": 128}
SCHEMES = ("q0f16", "q4f16_1")
SHARDS = (2, 4)
PROMPT_LEN, CHUNK, STEPS, BATCH, BATCH_STEPS = 40, 5, 16, 3, 8
TARGET = os.environ.get("TP_CHECK_TARGET", "cuda:sm_90")
DEVICE = "cpu" if TARGET.startswith("cpu") else "cuda:0"
TOL = 1e-2  # fp16 partial sums added in another order than one GEMM's: a few fp16 ulps of the logit scale


def build(root: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(2)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    hf.save_pretrained(root / "hf")
    for scheme in SCHEMES:
        for shards in (1, *SHARDS):
            out = root / scheme / f"tp{shards}"
            env = {**os.environ, "EMBER_TP_COLLECTIVES": "host"}
            subprocess.run(["ember", "compile", "--model", str(root / "hf"), "--target", TARGET, "--quant",
                            scheme, "--tensor-parallel", str(shards), "-o", str(out), "--force",
                            # the shards' threads share one device: two CUDA-graph captures at once collide
                            # (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT on the H100, session 14)
                            *(["--no-cuda-graph"] if TARGET.startswith("cuda") else [])], check=True,
                           stdout=subprocess.DEVNULL, env=env)
            print(f"built {out}", flush=True)


def device_arrays():
    """The collectives on the device when torch can see it, else ember's numpy ones (and say which)."""
    from ember.runtime.tensor_parallel import HostArrays

    try:
        import torch
    except ImportError:
        return HostArrays(), "host (numpy: no torch)"
    if DEVICE == "cpu" or not torch.cuda.is_available():
        return HostArrays(), "host (numpy: torch without CUDA)"

    class TorchArrays(HostArrays):
        def take(self, tensor):
            return torch.from_dlpack(tensor)

        def total(self, parts):
            out = parts[0].clone()
            for part in parts[1:]:
                out += part
            return out

        def concat(self, parts):
            return torch.cat(parts, 0)

        def put(self, array, recv):
            torch.from_dlpack(recv).copy_(array)

    return TorchArrays(), "device (torch)"


def _run(runner, prompt: list[int], tokens: list[int], batch_prompts: list[list[int]], batch_tokens):
    import numpy as np

    runner.reset()
    runner.add_sequence(0)
    rows = list(runner.prefill([0], [prompt], all_logits=True))
    rows += [runner.decode([0], [t])[0] for t in tokens]
    runner.remove_sequence(0)
    seqs = list(range(1, BATCH + 1))
    for s in seqs:
        runner.add_sequence(s)
    batched = [runner.prefill(seqs, batch_prompts)]
    batched += [runner.decode(seqs, list(step)) for step in batch_tokens]
    for s in seqs:
        runner.remove_sequence(s)
    return np.stack(rows), np.stack(batched)


def compare(row: dict, got, want) -> bool:
    """Each run's (single, batched) logits against the reference's, into `row`; whether both are within TOL
    of the logit scale with top-1 agreeing on at least 98% of the positions."""
    import numpy as np

    ok = True
    for name, g, w in zip(("single", "batched"), got, want):
        err = float(np.abs(g - w).max()) / float(np.abs(w).max())
        top1 = float((g.argmax(-1) == w.argmax(-1)).mean())
        row[name] = {"err_over_scale": round(err, 6), "top1_agree": top1}
        ok &= bool(err <= TOL and top1 >= 0.98)
    row["ok"] = ok
    return ok


def check(root: Path) -> int:
    import numpy as np

    from ember.runtime.loader import load_artifact
    from ember.runtime.model_runner import ModelRunner
    from ember.runtime.tensor_parallel import ShardedRunner

    arrays, where = device_arrays()
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, CONFIG["vocab_size"], PROMPT_LEN).tolist()
    tokens = rng.integers(3, CONFIG["vocab_size"], STEPS).tolist()
    batch_prompts = [rng.integers(3, CONFIG["vocab_size"], 7 + 3 * i).tolist() for i in range(BATCH)]
    batch_tokens = rng.integers(3, CONFIG["vocab_size"], (BATCH_STEPS, BATCH)).tolist()
    failed = 0
    for scheme in SCHEMES:
        ref = ModelRunner(load_artifact(root / scheme / "tp1", device=DEVICE), max_batch_size=BATCH,
                          prefill_chunk_size=CHUNK)
        want = _run(ref, prompt, tokens, batch_prompts, batch_tokens)
        for shards in SHARDS:
            tp = ShardedRunner(root / scheme / f"tp{shards}", devices=DEVICE, same_device=True, arrays=arrays,
                               max_batch_size=BATCH, prefill_chunk_size=CHUNK)
            got = _run(tp, prompt, tokens, batch_prompts, batch_tokens)
            row = {"scheme": scheme, "shards": shards, "collectives": where}
            ok = compare(row, got, want)
            failed += not ok
            print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "check"):
        sys.exit(__doc__)
    root = Path(sys.argv[2])
    if sys.argv[1] == "build":
        build(root)
    else:
        sys.exit(check(root))
