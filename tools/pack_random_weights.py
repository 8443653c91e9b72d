"""Turn a random-weights (benchmark) artifact into a packed one of the same library: seeded random bytes of every
parameter's true shape and dtype written into params/ shards (ShardWriter, a tensor at a time), the manifest
switched to packed weights, rehashed and resealed. For cold-start measurements where the real weights cannot be
carried (llama3-8b q4f16: 4.5 GB written on the GPU machine itself; README "Shipping").

    python tools/pack_random_weights.py ARTIFACT OUT [--seed 0]

Runtime-only (numpy + ember's runtime): no TVM needed. The numbers are meaningless as a model; only the shapes,
bytes and load path are real. The golden outputs (verify/) are dropped: they belong to the device fill.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from ember.runtime import artifact as art
    from ember.runtime.shards import ShardWriter, tensor_nbytes

    started = time.perf_counter()
    manifest = art.read_manifest(args.artifact)
    if manifest.weights != art.WEIGHTS_RANDOM:
        sys.exit(f"{args.artifact}: not a random-weights artifact (weights: {manifest.weights})")
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for rel in manifest.files:
        if not rel.startswith("verify/"):
            (args.out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(args.artifact / rel, args.out / rel)
    manifest.verification = None
    (args.out / art.PARAMS_DIR).mkdir(exist_ok=True)
    shard_limit, shards, size = 1 << 30, [[]], 0
    for p in manifest.params:
        nbytes = tensor_nbytes(p.shape, p.dtype)
        if shards[-1] and size + nbytes > shard_limit:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += nbytes
        p.file = f"{art.PARAMS_DIR}/params-{len(shards) - 1:05d}.safetensors"
    rng = np.random.default_rng(args.seed)
    total = 0
    for members in shards:
        with ShardWriter(args.out / members[0].file, [(p.name, p.shape, p.dtype) for p in members]) as writer:
            for p in members:
                nbytes = tensor_nbytes(p.shape, p.dtype)
                if p.dtype in ("float16", "float32", "bfloat16"):  # small normal values: finite logits
                    values = rng.standard_normal(nbytes // tensor_nbytes([1], p.dtype), dtype=np.float32) * 0.02
                    if p.dtype == "float16":
                        values = values.astype(np.float16)
                    elif p.dtype == "bfloat16":
                        values = (values.view(np.uint32) >> 16).astype(np.uint16)
                    data = values.view(np.uint8)
                else:
                    data = rng.integers(0, 256, size=nbytes, dtype=np.uint8)
                writer.write(p.name, data)
                total += nbytes
    manifest.weights = art.WEIGHTS_PACKED
    files = sorted(q for q in args.out.rglob("*") if q.is_file() and q.name != art.MANIFEST_FILE)
    manifest.files = {str(q.relative_to(args.out)): art.sha256_file(q) for q in files}
    manifest.sizes = {str(q.relative_to(args.out)): q.stat().st_size for q in files}
    manifest.manifest_sha256 = art.manifest_digest(json.loads(manifest.to_json()))
    (args.out / art.MANIFEST_FILE).write_text(manifest.to_json())
    print(json.dumps({"packed": str(args.out), "weight_bytes": total, "shards": len(shards),
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
