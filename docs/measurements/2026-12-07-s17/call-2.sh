#!/usr/bin/env bash
# Session 17 call 2: LongRoPE chunked prefill, cuda against the cpu build's chunks (tools/longrope_chunked_check.py;
# kit .carry/lr with BUILD/chunked_cpu.npy from `reference`). Lead: run { carry: [".carry/fix15", ".carry/lr"],
# command: "bash docs/measurements/2026-12-07-s17/call-2.sh", timeout_s: 120 }
set -u
mkdir -p /tmp/fix15 /tmp/lr && tar xJf .carry/fix15/kit.tar.xz -C /tmp/fix15 && tar xJf .carry/lr/kit.tar.xz -C /tmp/lr
mkdir -p /tmp/ember-pkgs && ln -sfn "$PWD" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONPATH=/tmp/ember-pkgs:/tmp/fix15/tvm_rt TVM_USE_RUNTIME_LIB=1 timeout 90 \
  python3 tools/longrope_chunked_check.py check /tmp/lr/kit/phi3_longrope/q4f16_1 | tee "$OUT/longrope-chunked.jsonl"
