#!/usr/bin/env python3
"""Tensor parallelism over several GPUs with NCCL (ember_tp_nccl_* in the library, runtime/nccl.py). NOT RUN YET:
only one-GPU machines have been lent; this is ready for the first multi-GPU one (H100 x2/x4/x8).

Here:          python tools/tensor_parallel_multi_gpu.py build DIR [SHARDS...]      (default shards: 2 4 8)
               a tiny HF llama (8 query / 8 kv heads, so 8 shards split it) compiled for cuda:sm_90 per scheme
               (q0f16, q4f16_1): unsharded and --tensor-parallel N; and llama3-70b-shaped random-weight builds
               (q4f16_1), unsharded and --tensor-parallel N, for `ember bench --devices`. TP_BENCH_MODEL=none skips
               the 70B builds (the parity part alone, a few minutes).
On the GPUs:   python tools/tensor_parallel_multi_gpu.py check DIR
               1. parity, for every build whose shard count fits the GPUs present: the shards on cuda:0-(N-1), NCCL
                  between them, against the unsharded build on cuda:0 (chunked prefill, every position's logits;
                  16 decode1 steps; 3 sequences decoded together), max |TP - TP1| over the logit scale and top-1
                  agreement, as tools/tensor_parallel_one_gpu.py measures them;
               2. `ember bench` of the 70B-shaped builds: TP1 on cuda:0 (where it fits), TP=N on cuda:0-(N-1):
                  prefill 512, decode at batch 1 and 16.
               One JSON line each (with "shards"); exit 1 if a parity check fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tensor_parallel_one_gpu import BATCH, BATCH_STEPS, CHUNK, PROMPT_LEN, STEPS, _run, compare  # noqa: E402

# 8 kv heads: 8 shards hold one each; small enough that 4 builds of each scheme fit the carry (~3 MB of weights each)
CONFIG = {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
          "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 128}
SCHEMES = ("q0f16", "q4f16_1")
TARGET = "cuda:sm_90"
BENCH_MODEL = os.environ.get("TP_BENCH_MODEL", "llama3-70b")
BENCH_QUANT = "q4f16_1"
BENCH_ARGS = ["--prefill", "512", "--batch", "1,16", "--steps", "64", "--repeats", "2"]


def _compile(args: list[str]) -> None:
    subprocess.run(["ember", "compile", "--target", TARGET, "--force", *args], check=True, stdout=subprocess.DEVNULL)


def build(root: Path, shard_counts: list[int]) -> None:
    import torch
    import transformers

    torch.manual_seed(3)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).save_pretrained(root / "hf")
    for scheme in SCHEMES:
        for shards in (1, *shard_counts):
            out = root / scheme / f"tp{shards}"
            _compile(["--model", str(root / "hf"), "--quant", scheme, "--tensor-parallel", str(shards), "-o", str(out)])
            print(f"built {out}", flush=True)
    if BENCH_MODEL != "none":
        for shards in (1, *shard_counts):
            out = root / "bench" / f"tp{shards}"
            _compile(["--model", BENCH_MODEL, "--quant", BENCH_QUANT, "--random-weights", "--tensor-parallel",
                      str(shards), "-o", str(out)])
            print(f"built {out}", flush=True)


def _gpus() -> int:
    from ember.runtime.tvm_import import ensure_device_runtime, import_tvm

    ensure_device_runtime("cuda")
    tvm = import_tvm()
    n = 0
    while tvm.cuda(n).exist:
        n += 1
    return n


def _shards_in(folder: Path) -> list[int]:
    return sorted(int(p.name[2:]) for p in folder.glob("tp*") if p.name[2:].isdigit() and int(p.name[2:]) > 1)


def parity(root: Path, gpus: int) -> int:
    import numpy as np

    from ember.runtime.loader import load_artifact
    from ember.runtime.model_runner import ModelRunner
    from ember.runtime.tensor_parallel import ShardedRunner

    rng = np.random.default_rng(0)
    prompt = rng.integers(3, CONFIG["vocab_size"], PROMPT_LEN).tolist()
    tokens = rng.integers(3, CONFIG["vocab_size"], STEPS).tolist()
    batch_prompts = [rng.integers(3, CONFIG["vocab_size"], 7 + 3 * i).tolist() for i in range(BATCH)]
    batch_tokens = rng.integers(3, CONFIG["vocab_size"], (BATCH_STEPS, BATCH)).tolist()
    failed = 0
    for scheme in SCHEMES:
        options = dict(max_batch_size=BATCH, prefill_chunk_size=CHUNK)
        want = _run(ModelRunner(load_artifact(root / scheme / "tp1", device="cuda:0"), **options),
                    prompt, tokens, batch_prompts, batch_tokens)
        for shards in _shards_in(root / scheme):
            if shards > gpus:
                print(json.dumps({"scheme": scheme, "shards": shards, "skipped": f"{gpus} GPUs"}), flush=True)
                continue
            runner = ShardedRunner(root / scheme / f"tp{shards}", devices=f"cuda:0-{shards - 1}", **options)
            got = _run(runner, prompt, tokens, batch_prompts, batch_tokens)
            row = {"scheme": scheme, "shards": shards, "collectives": "nccl", "nccl": runner.nccl.version}
            ok = compare(row, got, want)
            failed += not ok
            print(json.dumps(row), flush=True)
            runner.close()
    return failed


def bench(root: Path, gpus: int) -> None:
    folder = root / "bench"
    if not folder.is_dir():
        return
    for shards in (1, *_shards_in(folder)):
        if shards > gpus:
            print(json.dumps({"bench": BENCH_MODEL, "shards": shards, "skipped": f"{gpus} GPUs"}), flush=True)
            continue
        devices = ["--device", "cuda:0"] if shards == 1 else ["--devices", f"cuda:0-{shards - 1}"]
        proc = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'ember'; from ember.cli import main; "
                               "main()", "bench", str(folder / f"tp{shards}"), *devices, *BENCH_ARGS],
                              capture_output=True, text=True)
        rows = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        for line in rows:
            print(json.dumps({**json.loads(line), "shards": shards}), flush=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(json.dumps({"bench": BENCH_MODEL, "shards": shards, "rc": proc.returncode, "error": tail}),
                  flush=True)


def check(root: Path) -> int:
    gpus = _gpus()
    print(json.dumps({"gpus": gpus}), flush=True)
    failed = parity(root, gpus)
    bench(root, gpus)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("build", "check"):
        sys.exit(__doc__)
    where = Path(sys.argv[2])
    if sys.argv[1] == "build":
        build(where, [int(n) for n in sys.argv[3:]] or [2, 4, 8])
    else:
        sys.exit(check(where))
