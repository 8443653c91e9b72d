#!/usr/bin/env bash
# Next step on the tiny q4f16_1 batched-decode fault (session 14, not yet run): tiny Gemma 2 q4f16_1 built twice,
# a/ with EMBER_CUDA_LOWBATCH=0 (the batched linears on dlight), b/ with EMBER_CUDA_PDL=0 (no programmatic launch),
# each beside its cpu build. The fault (gemv_parity's batched decode, grid 8 x 256 at the failing launch) gone in a/
# names the low-batch kernel; gone in b/ names a launch-order race. Kit (here, ~2 min):
#   K=/tmp/abkit; EMBER_CUDA_LOWBATCH=0 PARITY_BUILDS=cpu,cuda python tools/gemv_parity.py build $K/a q4f16_1 gemma2
#   EMBER_CUDA_PDL=0 PARITY_BUILDS=cuda python tools/gemv_parity.py build $K/b q4f16_1 gemma2
#   cp -r $K/a/gemma2/q4f16_1/cpu $K/b/gemma2/q4f16_1/; cp -r <a runtime-only tvm_rt> $K/
#   find $K -name hf -type d -prune -exec rm -rf {} +; tar cJf .carry/ab/kit.tar.xz -C $K .
# Lead: run { carry: [".carry/ab"], command: "bash docs/measurements/2026-12-07-s14/call-ab.sh" }
set -u
D=/tmp/ab; mkdir -p $D && tar xJf .carry/ab/kit.tar.xz -C $D
mkdir -p /tmp/ember-pkgs && ln -sfn "$PWD" /tmp/ember-pkgs/ember
export PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1
for v in a b; do
  timeout 100 python3 tools/gemv_parity.py check $D/$v > "$OUT/$v.txt" 2>&1; echo "$v rc=$?"
  grep -o '"ok": [a-z]*\|batched_decode_max_err_vs_cpu": [0-9.e-]*' "$OUT/$v.txt"; grep "Error" "$OUT/$v.txt" | head -2
done
