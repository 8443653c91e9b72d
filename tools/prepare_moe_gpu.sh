#!/usr/bin/env bash
# Builds, on the 2-core box, what docs/measurements/moe-gpu-call.sh runs on a GPU: the runtime-only TVM subset,
# tiny Mixtral / Qwen3-MoE parity builds (tools/gemv_parity.py: cpu, cuda, cuda-graph, cuda-stock per scheme) and
# the random-weight presets (mixtral-8x7b, qwen3-30b-a3b and the dense llama3-8b, q4f16, cuda:sm_90), packed into
# .carry/moe/kit.tar.xz (must stay under the 64 MiB carry). Run from the repo root with the venv's ember on PATH.
set -eu
K=${K:-/tmp/moekit}
rm -rf "$K" && mkdir -p "$K" .carry/moe
python tools/make_runtime_subset.py "$K/tvm_rt" --python-version "${PYV:-3.12}"
python tools/gemv_parity.py build "$K/parity" "" mixtral,qwen3_moe
for m in mixtral-8x7b qwen3-30b-a3b llama3-8b; do
  /usr/bin/time -f "$m q4f16 compile %e s, peak RSS %M KB" \
    ember compile --model $m --target cuda:sm_90 --quant q4f16 --random-weights -o "$K/$m-q4f16" --force
done
find "$K/parity" -name hf -type d -prune -exec rm -rf {} +  # the HF folders are not needed on the GPU box
tar cJf .carry/moe/kit.tar.xz -C "$K" .
ls -la .carry/moe/kit.tar.xz
