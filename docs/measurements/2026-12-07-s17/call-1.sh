#!/usr/bin/env bash
# Session 17's GPU call.
# 1. tools/moe_kernel_check.py check: the cuda MoE block alone (per-weight plan for K-quant / mixed experts, the
#    grouped and per-slot plans of q4f16_1) at 1..200 tokens a call against float64 numpy on the same fp16 inputs;
#    then compute-sanitizer memcheck of the same run. Kit: PYTHONPATH=. python tools/moe_kernel_check.py build kit
# 2. tools/gemv_parity.py check of a tiny Phi-3 with LongRoPE (q4f16_1), cuda vs cpu. Kit:
#    PARITY_BUILDS=cpu,cuda python tools/gemv_parity.py build kit q4f16_1 phi3_longrope
# 3. the tiny K-quant Mixtral GGUF (tools/kquant_moe_tiny_gguf.py) on the kgemv plan, cuda vs cpu. Kit:
#    PARITY_BUILDS=cpu,cuda EMBER_CUDA_MOE_PER_WEIGHT=1 python tools/gemv_parity.py build-gguf kit kmoe.gguf kmoe
# 4. mixtral-8x7b q4_k_m (random weights) on the kgemv plan: ember verify, decode b1/b16, pp512. Kit:
#    EMBER_CUDA_MOE_PER_WEIGHT=1 ember compile --model mixtral-8x7b --target cuda:sm_90 --quant q4_k_m --random-weights
# 5. tools/nccl_one_gpu.py (issue 16: the NCCL lookup fix on a 1-rank communicator; kit .carry/tp-nccl).
# Lead: run { carry: [".carry/fix15", ".carry/mkc", ".carry/lr", ".carry/kmoe", ".carry/mixtral-q4km",
#             ".carry/tp-nccl"], command: "bash docs/measurements/2026-12-07-s17/call-1.sh", timeout_s: 590 }
set -u
FINAL_OUT=$OUT; OUT=/tmp/o; mkdir -p $OUT; trap 'tar czf $FINAL_OUT/all.tgz -C /tmp/o .' EXIT
repo=$PWD
mkdir -p /tmp/fix15 /tmp/mkc /tmp/lr && tar xJf .carry/fix15/kit.tar.xz -C /tmp/fix15 \
  && tar xJf .carry/mkc/kit.tar.xz -C /tmp/mkc && tar xJf .carry/lr/kit.tar.xz -C /tmp/lr
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
printf '%s\n' '#!/usr/bin/env bash' \
  'exec python3 -c "import sys; sys.argv[0] = '"'ember'"'; from ember.cli import main; main()" "$@"' > /tmp/ember_rt
chmod +x /tmp/ember_rt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
( export PYTHONPATH=/tmp/ember-pkgs:/tmp/fix15/tvm_rt TVM_USE_RUNTIME_LIB=1
  t0=$(date +%s)
  timeout 120 python3 tools/moe_kernel_check.py check /tmp/mkc/kit "$OUT/moe-kernel.jsonl" > "$OUT/moe-kernel.log" 2>&1
  echo "moe kernel check rc=$? $(( $(date +%s)-t0 ))s"
  python3 -c "
import json
for l in open('$OUT/moe-kernel.jsonl'):
    r = json.loads(l)
    if r.get('what') == 'check': print(r['case'], r['tokens'], 'ok' if r['ok'] else 'FAIL', '%.2e' % r['max_err_of_scale'], 'worst', r['worst_token'], 'over', r['tokens_over'])" 2>&1
  tail -n 3 "$OUT/moe-kernel.log"
  t0=$(date +%s)
  timeout 100 compute-sanitizer --tool memcheck --print-limit 20 python3 tools/moe_kernel_check.py check /tmp/mkc/kit \
    "$OUT/moe-kernel-memcheck.jsonl" > "$OUT/moe-memcheck.log" 2>&1
  echo "memcheck rc=$? $(( $(date +%s)-t0 ))s"; grep -E "ERROR SUMMARY|Invalid|failures" "$OUT/moe-memcheck.log" | head -8
  t0=$(date +%s)
  timeout 120 python3 tools/gemv_parity.py check /tmp/lr/kit > "$OUT/longrope.jsonl" 2> "$OUT/longrope.err"
  echo "longrope parity rc=$? $(( $(date +%s)-t0 ))s"; cat "$OUT/longrope.jsonl"; tail -n 3 "$OUT/longrope.err"
  mkdir -p /tmp/km && tar xJf .carry/kmoe/kit.tar.xz -C /tmp/km
  t0=$(date +%s)
  timeout 100 python3 tools/gemv_parity.py check /tmp/km > "$OUT/kmoe.jsonl" 2> "$OUT/kmoe.err"
  echo "kmoe parity rc=$? $(( $(date +%s)-t0 ))s"; cat "$OUT/kmoe.jsonl"; tail -n 3 "$OUT/kmoe.err"
  M=/tmp/mxq && mkdir -p $M && tar xJf .carry/mixtral-q4km/kit.tar.xz -C $M
  t0=$(date +%s)
  timeout 120 /tmp/ember_rt verify $M/mixtral-q4km --device cuda > "$OUT/mixtral-verify.log" 2>&1
  echo "mixtral verify rc=$? $(( $(date +%s)-t0 ))s"; tail -n 6 "$OUT/mixtral-verify.log"
  t0=$(date +%s)
  timeout 150 /tmp/ember_rt bench $M/mixtral-q4km --device cuda --prefill 512 --batch 1,16 --steps 32 --repeats 2 \
    --output "$OUT/bench-mixtral-q4km.jsonl" > "$OUT/bench-mixtral-q4km.log" 2>&1
  echo "mixtral bench rc=$? $(( $(date +%s)-t0 ))s"; tail -n 3 "$OUT/bench-mixtral-q4km.log"
  python3 -c "
import json; print('mixtral q4_k_m', json.dumps({r['metric']: round(r['value'], 1) for r in map(json.loads, open('$OUT/bench-mixtral-q4km.jsonl')) if 'metric' in r}))" )
D=/tmp/tpn; mkdir -p $D && tar xJf .carry/tp-nccl/kit.tar.xz -C $D
( export PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1
  timeout 90 python3 tools/nccl_one_gpu.py $D/nccl/tp2 > "$OUT/nccl-one-gpu.jsonl" 2> "$OUT/nccl-one-gpu.err"
  echo "nccl_one_gpu rc=$?"; cat "$OUT/nccl-one-gpu.jsonl"; tail -5 "$OUT/nccl-one-gpu.err" )
