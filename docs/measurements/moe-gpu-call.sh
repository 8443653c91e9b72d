#!/usr/bin/env bash
# Mixture-of-experts on the GPU (issue 15; kernels/moe.cuh), one call (~6-8 min): built here by
# tools/prepare_moe_gpu.sh into .carry/moe/kit.tar.xz (runtime-only TVM, tiny parity builds, random-weight presets).
#  1. tools/gemv_parity.py check: tiny Mixtral (4 experts, top 2) and Qwen3-MoE (8 experts, top 3, one dense layer),
#     q4f16 / q4f16_1 / q8f16 / q0f16, cuda (decode1, batched decode, prefill, chunked prefill, CUDA graphs) vs cpu.
#  2. ember verify + ember bench (--batch 1,16 --prefill 128,512 --steps 32) of mixtral-8x7b and qwen3-30b-a3b q4f16
#     (random weights filled on the device), then the dense llama3-8b q4f16 beside them (SKIP_DENSE=1 leaves it out).
# Lead: run { carry: [".carry/moe"], command: "bash docs/measurements/moe-gpu-call.sh", timeout_s: 560 }.
set -u
repo=$PWD; D=/tmp/moe
mkdir -p $D && tar xJf .carry/moe/kit.tar.xz -C $D
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
cat > /tmp/ember_rt <<SH
#!/usr/bin/env bash
PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1 \
  exec python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "\$@"
SH
chmod +x /tmp/ember_rt
t0=$(date +%s)
PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1 timeout 150 python3 tools/gemv_parity.py check $D/parity \
  > "$OUT/moe-parity.jsonl" 2> "$OUT/moe-parity.err"; echo "parity rc=$? $(( $(date +%s)-t0 ))s"
cat "$OUT/moe-parity.jsonl"; tail -5 "$OUT/moe-parity.err"
arts="mixtral-8x7b-q4f16 qwen3-30b-a3b-q4f16"
[ -z "${SKIP_DENSE:-}" ] && arts="$arts llama3-8b-q4f16"
for a in $arts; do
  timeout 90 /tmp/ember_rt verify $D/$a --device cuda --json > "$OUT/verify-$a.json" 2>&1; echo "verify $a rc=$? ok=$(grep -o '"ok": [a-z]*' "$OUT/verify-$a.json" | head -1)"
  timeout 120 /tmp/ember_rt bench $D/$a --device cuda --prefill 128,512 --batch 1,16 --steps 32 --repeats 3 \
    --output "$OUT/bench-$a.jsonl" > "$OUT/bench-$a.log" 2>&1; echo "bench $a rc=$? $(( $(date +%s)-t0 ))s"
  tail -3 "$OUT/bench-$a.log"
  python3 -c "
import json; print('$a', json.dumps({r['metric']: r['value'] for r in map(json.loads, open('$OUT/bench-$a.jsonl')) if 'metric' in r}))"
done
nvidia-smi --query-gpu=memory.used --format=csv,noheader
