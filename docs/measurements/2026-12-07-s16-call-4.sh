#!/usr/bin/env bash
# Session 16's GPU call: call-3.sh of session 15 (the rebuilt tp-nccl kit: NCCL collectives on a 1-rank
# communicator, the one-GPU sharded check; llama3-8b q4f16_1 decode before/after the index_or_zero fix), then the
# K-quant experts of a tiny Mixtral GGUF (tools/kquant_moe_tiny_gguf.py: Q4_K/Q4_K/Q6_K and Q5_K experts) on
# moe.cuh's per-weight plan against its cpu build (tools/gemv_parity.py check; kit .carry/kmoe/kit.tar.xz from
#   PARITY_BUILDS=cpu,cuda python tools/gemv_parity.py build-gguf K /tmp/kmoe/kmoe.gguf kmoe).
# Lead: run { carry: [".carry/fix15", ".carry/tp-nccl", ".carry/kmoe"],
#             command: "bash docs/measurements/2026-12-07-s16-call-4.sh", timeout_s: 500 }
set -u
FINAL_OUT=$OUT; OUT=/tmp/o; mkdir -p $OUT; trap 'tar czf $FINAL_OUT/all.tgz -C /tmp/o .' EXIT
repo=$PWD
mkdir -p /tmp/km && tar xJf .carry/kmoe/kit.tar.xz -C /tmp/km
mkdir -p /tmp/fix15 && tar xJf .carry/fix15/kit.tar.xz -C /tmp/fix15
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
( export PYTHONPATH=/tmp/ember-pkgs:/tmp/fix15/tvm_rt TVM_USE_RUNTIME_LIB=1
  timeout 90 python3 tools/gemv_parity.py check /tmp/km > "$OUT/kmoe.jsonl" 2> "$OUT/kmoe.err"; echo "kmoe rc=$?"
  python3 -c "
import json
for l in open('$OUT/kmoe.jsonl'):
    r = json.loads(l); print(r['model'], r['scheme'], 'ok', r['ok'], {k: round(v, 5) if isinstance(v, float) else v for k, v in r['cuda'].items()})"
  tail -n 3 "$OUT/kmoe.err" )
OUT=$FINAL_OUT bash docs/measurements/2026-12-07-s15/call-3.sh
# mixtral-8x7b q4_k_m (random weights; Q4_K experts, Q6_K down in the more-bits layers, llama.cpp's Q4_K_M mix) on
# the per-weight plan: ember verify (2-layer truncation vs the cpu build), then decode b1/b16 and pp512.
# Kit .carry/mixtral-q4km: ember compile --model mixtral-8x7b --target cuda:sm_90 --quant q4_k_m --random-weights
if [ -d .carry/mixtral-q4km ]; then
  M=/tmp/mxq && mkdir -p $M && tar xJf .carry/mixtral-q4km/kit.tar.xz -C $M
  export PYTHONPATH=/tmp/ember-pkgs:/tmp/fix15/tvm_rt TVM_USE_RUNTIME_LIB=1
  timeout 120 /tmp/ember_rt verify $M/mixtral-q4km --device cuda > "$OUT/mixtral-verify.log" 2>&1
  echo "mixtral verify rc=$?"; tail -n 4 "$OUT/mixtral-verify.log"
  timeout 150 /tmp/ember_rt bench $M/mixtral-q4km --device cuda --prefill 512 --batch 1,16 --steps 32 --repeats 2 \
    --output "$OUT/bench-mixtral-q4km.jsonl" > "$OUT/bench-mixtral-q4km.log" 2>&1; echo "mixtral bench rc=$?"
  tail -n 3 "$OUT/bench-mixtral-q4km.log"
  python3 -c "
import json; print('mixtral q4_k_m', json.dumps({r['metric']: round(r['value'], 1) for r in map(json.loads, open('$OUT/bench-mixtral-q4km.jsonl')) if 'metric' in r}))"
fi
