#!/usr/bin/env bash
# Session 17's GPU call.
# 1. tools/moe_kernel_check.py check: the cuda MoE block alone (per-weight plan for K-quant / mixed experts, the
#    grouped and per-slot plans of q4f16_1) at 1..200 tokens a call against float64 numpy on the same fp16 inputs;
#    then compute-sanitizer memcheck of the same run. Kit: PYTHONPATH=. python tools/moe_kernel_check.py build kit
# 2. tools/gemv_parity.py check of a tiny Phi-3 with LongRoPE (q4f16_1), cuda vs cpu. Kit:
#    PARITY_BUILDS=cpu,cuda python tools/gemv_parity.py build kit q4f16_1 phi3_longrope
# 3. docs/measurements/tp-nccl-one-gpu-call.sh (issue 16: the NCCL lookup fix on a 1-rank communicator).
# Lead: run { carry: [".carry/fix15", ".carry/mkc", ".carry/lr", ".carry/tp-nccl"],
#             command: "bash docs/measurements/2026-12-07-s17/call-1.sh", timeout_s: 480 }
set -u
FINAL_OUT=$OUT; OUT=/tmp/o; mkdir -p $OUT; trap 'tar czf $FINAL_OUT/all.tgz -C /tmp/o .' EXIT
repo=$PWD
mkdir -p /tmp/fix15 /tmp/mkc /tmp/lr && tar xJf .carry/fix15/kit.tar.xz -C /tmp/fix15 \
  && tar xJf .carry/mkc/kit.tar.xz -C /tmp/mkc && tar xJf .carry/lr/kit.tar.xz -C /tmp/lr
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
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
  timeout 150 compute-sanitizer --tool memcheck --print-limit 20 python3 tools/moe_kernel_check.py check /tmp/mkc/kit \
    "$OUT/moe-kernel-memcheck.jsonl" > "$OUT/moe-memcheck.log" 2>&1
  echo "memcheck rc=$? $(( $(date +%s)-t0 ))s"; grep -E "ERROR SUMMARY|Invalid|failures" "$OUT/moe-memcheck.log" | head -8
  t0=$(date +%s)
  timeout 120 python3 tools/gemv_parity.py check /tmp/lr/kit > "$OUT/longrope.jsonl" 2> "$OUT/longrope.err"
  echo "longrope parity rc=$? $(( $(date +%s)-t0 ))s"; cat "$OUT/longrope.jsonl"; tail -n 3 "$OUT/longrope.err" )
mkdir -p $OUT/tpn; OUT=$OUT/tpn bash docs/measurements/tp-nccl-one-gpu-call.sh
