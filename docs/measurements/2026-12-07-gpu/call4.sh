#!/usr/bin/env bash
# session 13 call 4 (issue 12; call3.sh + ARTS and PROFILE): llama3-8b q4f16 with the warp-specialized 4-bit tiles chosen (rates from call 1's
# qgemm-ws.jsonl) beside the same model whose table left them out (rate 0), and q0f16 on ember's fp16 kernel (now
# the default); verify + prefill 128..8000 + decode b1/b16 each, one lease. PEER=1 then runs llama.cpp (gpu.sh peer).
set -u
repo=$PWD; D=/tmp/k3
mkdir -p $D && tar xJf .carry/k3/kit3.tar.xz -C $D
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$OUT/gpu.txt"
cat > /tmp/ember_rt <<SH
#!/usr/bin/env bash
PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1 \
  exec python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "\$@"
SH
chmod +x /tmp/ember_rt
t0=$(date +%s)
arts=${ARTS-l8-q4f16-ws l8-q4f16 l8-q0f16}  # ARTS= (empty): the peer only
for a in $arts; do
  timeout 60 /tmp/ember_rt verify $D/$a --device cuda --json > "$OUT/verify-$a.json" 2>&1; echo "verify $a rc=$? ok=$(grep -o '"ok": [a-z]*' "$OUT/verify-$a.json" | head -1)"
  timeout 100 /tmp/ember_rt bench $D/$a --device cuda --prefill ${PREFILL:-128,512,2048,4096,8000} --batch 1,16 --steps 32 --repeats 3 \
    --output "$OUT/bench-$a.jsonl" > /dev/null 2>&1; echo "bench $a rc=$? $(( $(date +%s)-t0 ))s"
  python3 -c "
import json; print('$a', json.dumps({r['metric']: r['value'] for r in map(json.loads, open('$OUT/bench-$a.jsonl')) if 'metric' in r}))"
done
if [ -n "${PROFILE:-}" ]; then  # where the 128-token prefill's time goes, the 4-bit build with the ws tiles
  timeout 90 /tmp/ember_rt bench $D/l8-q4f16-ws --device cuda --prefill 128 --batch 1 --steps 16 --repeats 1 --profile \
    --output "$OUT/profile-l8-q4f16-ws.jsonl" > "$OUT/profile.log" 2>&1; echo "profile rc=$? $(( $(date +%s)-t0 ))s"
  tail -40 "$OUT/profile.log"
fi
if [ -n "${PEER:-}" ]; then
  cp .carry/k3/lcpp-src.tgz $D/ 2>/dev/null || true
  PROMPTS=${PROMPTS:-128,512,2048,4096,8000} NPL=1,16 timeout 560 bash benchmarks/gpu.sh peer $D F16 Q4_0 > "$OUT/peer.log" 2>&1; echo "peer rc=$? $(( $(date +%s)-t0 ))s"
  grep -h '"avg_ts"' "$OUT/llamacpp.jsonl" 2>/dev/null | python3 -c "
import json, sys
for l in sys.stdin:
    r = json.loads(l); print('llama.cpp', r.get('model_type'), 'pp', r.get('n_prompt'), 'tg', r.get('n_gen'), round(r['avg_ts'], 1))"
  tail -3 "$OUT/peer.log"
fi
