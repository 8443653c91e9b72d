#!/usr/bin/env bash
# Session 15, first GPU call (~3 min): 1. the q4f16_1 batched-decode fault A/B (tiny gemma2 q4f16_1: a/ built with
# EMBER_CUDA_LOWBATCH=0, b/ with EMBER_CUDA_PDL=0; kit .carry/ab, see ../2026-12-07-s14/call-ab.sh);
# 2. the tiny K-quant GGUF (tools/kquant_tiny_gguf.py: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1 tensors) cuda and
# cuda-graph vs cpu (kit .carry/kq15: `PARITY_BUILDS=cpu,cuda,cuda-graph tools/gemv_parity.py build-gguf`);
# 3. the tensor-parallel one-GPU check (kit .carry/tp, tools/prepare_tp_gpu.sh; builds without CUDA graphs);
# 4. the faulting default build (tiny gemma2 q4f16_1 of .carry/fix, session 14) plain, with eager module loading,
# and under compute-sanitizer's initcheck and racecheck (memcheck found nothing in session 14).
# Lead: run { carry: [".carry/ab", ".carry/kq15", ".carry/tp", ".carry/fix"], command: "bash docs/measurements/2026-12-07-s15/call-1.sh" }
set -u
FINAL_OUT=$OUT; OUT=/tmp/o; mkdir -p $OUT; trap 'tar czf $FINAL_OUT/all.tgz -C /tmp/o .' EXIT
repo=$PWD
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
mkdir -p /tmp/ab /tmp/kq /tmp/tp
tar xJf .carry/ab/kit.tar.xz -C /tmp/ab; tar xJf .carry/kq15/kit.tar.xz -C /tmp/kq; tar xJf .carry/tp/kit.tar.xz -C /tmp/tp
export PYTHONPATH=/tmp/ember-pkgs:/tmp/ab/tvm_rt TVM_USE_RUNTIME_LIB=1
for v in a b; do
  timeout 100 python3 tools/gemv_parity.py check /tmp/ab/$v > "$OUT/ab-$v.txt" 2>&1; echo "$v rc=$?"
  grep -o '"ok": [a-z]*\|batched_decode_max_err_vs_cpu": [0-9.e-]*' "$OUT/ab-$v.txt"; grep "Error" "$OUT/ab-$v.txt" | head -2
done
t0=$(date +%s)
timeout 120 python3 tools/gemv_parity.py check /tmp/kq/parity > "$OUT/kq-parity.jsonl" 2> "$OUT/kq-parity.err"
echo "kq parity rc=$? $(( $(date +%s)-t0 ))s"; cat "$OUT/kq-parity.jsonl"; tail -n 5 "$OUT/kq-parity.err"
t0=$(date +%s)
timeout 200 python3 tools/tensor_parallel_one_gpu.py check /tmp/tp/tp > "$OUT/tp-one-gpu.jsonl" 2> "$OUT/tp-one-gpu.err"
echo "tp check rc=$? $(( $(date +%s)-t0 ))s"; cat "$OUT/tp-one-gpu.jsonl"; tail -n 5 "$OUT/tp-one-gpu.err"
mkdir -p /tmp/fix && tar xJf .carry/fix/kit.tar.xz -C /tmp/fix && mkdir -p /tmp/g && mv /tmp/fix/parity/gemma2 /tmp/g/
export PYTHONPATH=/tmp/ember-pkgs:/tmp/fix/tvm_rt
san=/usr/local/cuda/bin/compute-sanitizer
for v in plain eager initcheck racecheck; do
  case $v in
    plain) pre=""; env="";; eager) pre=""; env="CUDA_MODULE_LOADING=EAGER";;
    *) pre="$san --tool $v --print-limit 6"; env="";;
  esac
  t0=$(date +%s)
  env $env timeout 150 $pre python3 tools/gemv_parity.py check /tmp/g > "$OUT/g-$v.txt" 2>&1
  echo "gemma2 $v rc=$? $(( $(date +%s)-t0 ))s"
  grep -E '"ok": [a-z]*|ERROR SUMMARY|Error|Invalid|Uninitialized|hazard|at .*kernel' "$OUT/g-$v.txt" | cut -c1-300 | head -8
done
