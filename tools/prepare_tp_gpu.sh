#!/usr/bin/env bash
# Builds, on the 2-core box, what docs/measurements/tp-one-gpu-call.sh runs on one GPU: the runtime-only TVM subset
# and tools/tensor_parallel_one_gpu.py's builds (a tiny llama, q0f16 and q4f16_1, unsharded and --tensor-parallel
# 2 and 4 with the host collectives, cuda:sm_90), packed into .carry/tp/kit.tar.xz (a few MiB; the carry limit is
# 64 MiB). Run from the repo root with the venv's ember on PATH (~6 cuda compiles, 5-8 min here).
set -eu
K=${K:-/tmp/tpkit}
rm -rf "$K" && mkdir -p "$K" .carry/tp
python tools/make_runtime_subset.py "$K/tvm_rt" --python-version "${PYV:-3.12}"
python tools/tensor_parallel_one_gpu.py build "$K/tp"
rm -rf "$K/tp/hf"  # not needed on the GPU box
tar cJf .carry/tp/kit.tar.xz -C "$K" .
ls -la .carry/tp/kit.tar.xz
