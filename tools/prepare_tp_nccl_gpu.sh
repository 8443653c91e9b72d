#!/usr/bin/env bash
# Builds, on the 2-core box, what docs/measurements/tp-nccl-one-gpu-call.sh runs on ONE GPU: the runtime-only TVM
# subset, tools/tensor_parallel_one_gpu.py's builds (a tiny llama, q0f16 and q4f16_1, unsharded and
# --tensor-parallel 2 and 4 with the host collectives) and one cuda --tensor-parallel 2 build of the same llama with
# ember's NCCL collectives in its library (for tools/nccl_one_gpu.py and the --devices refusals), all cuda:sm_90,
# packed into .carry/tp-nccl/kit.tar.xz (a few MiB). Run from the repo root with the venv's python and ember on PATH:
#   PATH=$PWD/.venv/bin:$PATH bash tools/prepare_tp_nccl_gpu.sh        (~7 cuda compiles, 3-8 min here)
set -eu
K=${K:-/tmp/tpncclkit}
rm -rf "$K" && mkdir -p "$K" .carry/tp-nccl
python tools/make_runtime_subset.py "$K/tvm_rt" --python-version "${PYV:-3.12}"
python tools/tensor_parallel_one_gpu.py build "$K/tp"
ember compile --model "$K/tp/hf" --target cuda:sm_90 --quant q0f16 --tensor-parallel 2 -o "$K/nccl/tp2" --force \
  > /dev/null
rm -rf "$K/tp/hf"  # not needed on the GPU box
tar cJf .carry/tp-nccl/kit.tar.xz -C "$K" .
ls -la .carry/tp-nccl/kit.tar.xz
