#!/usr/bin/env bash
# The lane-load fix (lowbatch.cuh and co., session 14) on the GPU: tiny phi3 / mixtral / gemma2 q4f16_1 parity
# builds (the batched decode faulted before), then phi3 again under compute-sanitizer. Kit: .carry/fix/kit.tar.xz
# (runtime-only TVM + `PARITY_BUILDS=cpu,cuda,cuda-graph tools/gemv_parity.py build DIR q4f16_1 phi3,mixtral,gemma2`).
set -u
repo=$PWD; D=/tmp/fix
mkdir -p $D && tar xJf .carry/fix/kit.tar.xz -C $D
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
export PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1
timeout 200 python3 tools/gemv_parity.py check $D/parity > "$OUT/parity.jsonl" 2> "$OUT/parity.err"
echo "parity rc=$?"; python3 -c "
import json
for l in open('$OUT/parity.jsonl'):
    r = json.loads(l); print(r['model'], r['scheme'], r['ok'], {k: round(v, 5) for k, v in r['cuda'].items() if 'err' in k})"
tail -2 "$OUT/parity.err"
mkdir -p /tmp/san && mv $D/parity/phi3 /tmp/san/
timeout 200 /usr/local/cuda/bin/compute-sanitizer --print-limit 4 python3 tools/gemv_parity.py check /tmp/san \
  > "$OUT/san.txt" 2>&1; echo "sanitizer rc=$?"; grep -E "ERROR SUMMARY|Invalid|at .*kernel" "$OUT/san.txt" | head
