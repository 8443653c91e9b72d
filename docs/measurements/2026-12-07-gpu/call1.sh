#!/usr/bin/env bash
# session 12 call 1: session 11's SHORT call (ember's fp16 GEMM alone vs cuBLAS; llama3-8b q0f16 on it beside CUTLASS)
# then qwen3-8b q4f16 (new architecture: q/k RMSNorm per head) verified against its cpu golden outputs and benched
set -u
SHORT=1 bash docs/measurements/2026-12-06-h200-gemm90/call1.sh
tar xJf .carry/h/q3.tar.xz -C /tmp/run
t0=$(date +%s)
timeout 60 /tmp/ember_rt verify /tmp/run/q3-8b --device cuda --json > "$OUT/verify-q3-8b.json" 2>&1; echo "verify q3-8b rc=$?"
head -c 400 "$OUT/verify-q3-8b.json"; echo
timeout 90 /tmp/ember_rt bench /tmp/run/q3-8b --device cuda --prefill 128,512 --batch 1,16 --steps 32 --repeats 3 \
  --output "$OUT/bench-q3-8b.jsonl" > /dev/null 2>&1; echo "bench q3-8b rc=$? $(( $(date +%s)-t0 ))s"
python3 -c "
import json; print('q3-8b', json.dumps({r['metric']: r['value'] for r in map(json.loads, open('$OUT/bench-q3-8b.jsonl')) if 'metric' in r}))"
