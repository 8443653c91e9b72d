#!/usr/bin/env bash
# Issue 15 part 3 (GGUF K-quants kept native) on the lent GPU, one call. Everything was compiled on the build box:
#   .carry/kq/kit.tar.xz = tvm_rt/ (tools/make_runtime_subset.py, runtime-only TVM), l8-q4_k_m/ (llama3-8b shapes,
#   `ember compile --model llama3-8b --quant q4_k_m --random-weights --target cuda:sm_90`: Q4_K + Q6_K weight by
#   weight as llama.cpp's Q4_K_M, 5.01 GB), parity/ (`tools/gemv_parity.py build-gguf` of the tiny Q4_K_M-like
#   GGUF of tools/kquant_tiny_gguf.py: cpu, cuda, cuda-graph, cuda-stock builds), lcpp-src.tgz (llama.cpp's tree).
# Steps: 1. tiny-model parity (kgemv.cuh at decode1 and dlight's inlined dequant for batched decode / prefill vs
# the cpu build, whose values are gguf's bit for bit; cuda-stock = EMBER_CUDA_GEMV=0, the kernel A/B);
# 2. `ember verify` of the 8B artifact (its golden logits: a 2-layer truncation built for cpu);
# 3. `ember bench --batch 1,16 --prefill 128,512`; 4. llama.cpp's Q4_K_M of the same shapes (PEER=0 skips it).
# Target: decode b1 >= 1.3x llama.cpp's Q4_K_M (277 tok/s on the H200 of 2026-12-01).
set -u
repo=$PWD; D=/tmp/kq
mkdir -p $D && tar xJf .carry/kq/kit.tar.xz -C $D
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$OUT/gpu.txt"
export PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1
cat > /tmp/ember_rt <<SH
#!/usr/bin/env bash
exec python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "\$@"
SH
chmod +x /tmp/ember_rt
t0=$(date +%s)
timeout 120 python3 tools/gemv_parity.py check $D/parity > "$OUT/parity.jsonl" 2> "$OUT/parity.err"
echo "parity rc=$? $(( $(date +%s)-t0 ))s"; cat "$OUT/parity.jsonl"; tail -5 "$OUT/parity.err"
timeout 90 /tmp/ember_rt verify $D/l8-q4_k_m --device cuda --json > "$OUT/verify-l8-q4_k_m.json" 2>&1
echo "verify rc=$? ok=$(grep -o '"ok": [a-z]*' "$OUT/verify-l8-q4_k_m.json" | head -1)"
timeout 150 /tmp/ember_rt bench $D/l8-q4_k_m --device cuda --prefill 128,512 --batch 1,16 --steps 64 --repeats 3 \
  --output "$OUT/bench-l8-q4_k_m.jsonl" > "$OUT/bench.log" 2>&1; echo "bench rc=$? $(( $(date +%s)-t0 ))s"
python3 -c "
import json; print('l8-q4_k_m', json.dumps({r['metric']: r['value'] for r in map(json.loads, open('$OUT/bench-l8-q4_k_m.jsonl')) if 'metric' in r}))"
if [ "${PEER:-1}" != 0 ]; then  # llama.cpp builds (~5 min), makes a random F16 GGUF, quantizes it to Q4_K_M
  unset PYTHONPATH TVM_USE_RUNTIME_LIB
  PROMPTS=128,512 NPL=1,16 timeout 560 bash benchmarks/gpu.sh peer $D Q4_K_M > "$OUT/peer.log" 2>&1
  echo "peer rc=$? $(( $(date +%s)-t0 ))s"
  grep -h '"avg_ts"' "$D/results/llamacpp.jsonl" "$OUT/llamacpp.jsonl" 2>/dev/null | python3 -c "
import json, sys
for l in sys.stdin:
    r = json.loads(l); print('llama.cpp', r.get('model_type'), 'pp', r.get('n_prompt'), 'tg', r.get('n_gen'), round(r['avg_ts'], 1))"
  tail -3 "$OUT/peer.log"
fi
