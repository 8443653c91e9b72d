#!/usr/bin/env bash
# Builds, on the 2-core box, what docs/measurements/2026-12-07-s14/call-a.sh runs on a GPU: the runtime-only TVM
# subset, tiny parity builds (tools/gemv_parity.py: cpu, cuda, cuda-graph per scheme of $PARITY_MODELS; the stock
# build only for the dense ones) and random-weight presets (q4f16, cuda:sm_90): $PRESETS, plus $SLOTS_PRESETS
# compiled with EMBER_CUDA_MOE=slots (the per-slot MoE plan, an A/B of the grouped GEMM), packed into
# .carry/moe/kit.tar.xz (must stay under the 64 MiB carry). Run from the repo root with the venv's ember on PATH.
set -eu
K=${K:-/tmp/moekit}
PARITY_MODELS=${PARITY_MODELS:-mixtral,qwen3_moe,phi3}
PRESETS=${PRESETS:-mixtral-8x7b qwen3-30b-a3b llama3-8b phi-3-mini-4k}
SLOTS_PRESETS=${SLOTS_PRESETS:-qwen3-30b-a3b}
rm -rf "$K" && mkdir -p "$K" .carry/moe
python tools/make_runtime_subset.py "$K/tvm_rt" --python-version "${PYV:-3.12}"
PARITY_BUILDS=cpu,cuda,cuda-graph python tools/gemv_parity.py build "$K/parity" "" "$PARITY_MODELS"
for m in $PRESETS; do
  /usr/bin/time -f "$m q4f16 compile %e s, peak RSS %M KB" \
    ember compile --model $m --target cuda:sm_90 --quant q4f16 --random-weights -o "$K/$m-q4f16" --force
done
for m in $SLOTS_PRESETS; do
  EMBER_CUDA_MOE=slots ember compile --model $m --target cuda:sm_90 --quant q4f16 --random-weights \
    -o "$K/$m-q4f16-slots" --force
done
find "$K/parity" -name hf -type d -prune -exec rm -rf {} +  # the HF folders are not needed on the GPU box
tar cJf .carry/moe/kit.tar.xz -C "$K" .
ls -la .carry/moe/kit.tar.xz
