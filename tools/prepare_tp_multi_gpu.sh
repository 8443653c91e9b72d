#!/usr/bin/env bash
# Builds, on the 2-core box, what docs/measurements/tp-multi-gpu-call.sh runs on several GPUs (NOT RUN YET: no
# multi-GPU kind has been lent): the runtime-only TVM subset and tools/tensor_parallel_multi_gpu.py's builds (a tiny
# llama, q0f16 and q4f16_1, unsharded and --tensor-parallel 2/4/8 with ember's NCCL collectives; llama3-70b-shaped
# random-weight q4f16_1 builds, unsharded and TP 2/4/8), packed into .carry/tp-multi/kit.tar.xz. Random-weight
# artifacts ship no weights (each shard fills its own on its GPU), so the kit is the libraries: check its size
# against the 50 MiB carry (SHARDS="2 4" or TP_BENCH_MODEL=none make it smaller). Run from the repo root:
#   PATH=$PWD/.venv/bin:$PATH bash tools/prepare_tp_multi_gpu.sh      (~16 cuda compiles; the 70B ones ~2 min each)
set -eu
K=${K:-/tmp/tpmultikit}
rm -rf "$K" && mkdir -p "$K" .carry/tp-multi
python tools/make_runtime_subset.py "$K/tvm_rt" --python-version "${PYV:-3.12}"
python tools/tensor_parallel_multi_gpu.py build "$K/tp" ${SHARDS:-2 4 8}
rm -rf "$K/tp/hf" "$K"/tp/*/tp*/ir.txt
tar cJf .carry/tp-multi/kit.tar.xz -C "$K" .
ls -la .carry/tp-multi/kit.tar.xz
