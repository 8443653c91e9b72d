#!/usr/bin/env bash
# session 13 (issues 12 and 15): one script, sections chosen by SECTIONS (run in consecutive calls of one lease):
#   ember  llama3-8b q4f16 with the warp-specialized 4-bit tiles (kit3: l8-q4f16-ws), q0f16 on ember's fp16 GEMM
#          (l8-q0f16), both verify + prefill 128..8000 + decode b1/b16; the previous tile table (l8-q4f16) at 128/512;
#          then the 128-token prefill profiled (ember bench --profile)
#   gemma  Gemma on cuda: tools/prefill_attention_check.py (head dim 256, windows by sign, soft-capping vs torch),
#          tools/gemv_parity.py check on tiny Gemma 2 / Gemma 3 (cuda vs cpu), gemma2-2b q4f16 verify + bench
#   peer   llama.cpp F16 and Q4_0 (benchmarks/gpu.sh peer): pp 128..8000, tg128, batched 1/16
# Carry: .carry/k3 (kit3.tar.xz: tvm_rt, l8-*, lcpp-src.tgz) for ember/peer, .carry/g (gemma.tar.xz: gp/, g2-2b/;
# tvm_rt.tar.xz) for gemma.
set -u
repo=$PWD; D=/tmp/k3
mkdir -p $D
[ -f .carry/k3/kit3.tar.xz ] && [ ! -d $D/l8-q4f16-ws ] && tar xJf .carry/k3/kit3.tar.xz -C $D
[ -d $D/tvm_rt ] || tar xJf .carry/g/tvm_rt.tar.xz -C $D  # the runtime alone (calls without kit3)
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$OUT/gpu.txt"
cat > /tmp/ember_rt <<SH
#!/usr/bin/env bash
PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1 \
  exec python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "\$@"
SH
chmod +x /tmp/ember_rt
t0=$(date +%s)
summary() {  # one line of metric: value per bench file
  python3 -c "
import json; print('$1', json.dumps({r['metric']: r['value'] for r in map(json.loads, open('$OUT/bench-$1.jsonl')) if 'metric' in r}))"
}
bench() {  # ART PREFILL
  timeout 60 /tmp/ember_rt verify "$1" --device cuda --json > "$OUT/verify-$(basename $1).json" 2>&1
  echo "verify $(basename $1) rc=$? $(grep -o '"ok": [a-z]*' "$OUT/verify-$(basename $1).json" | head -1)"
  timeout 120 /tmp/ember_rt bench "$1" --device cuda --prefill "$2" --batch 1,16 --steps 32 --repeats 3 \
    --output "$OUT/bench-$(basename $1).jsonl" > /dev/null 2>&1; echo "bench $(basename $1) rc=$? $(( $(date +%s)-t0 ))s"
  summary "$(basename $1)"
}
for section in ${SECTIONS:-ember}; do
  case $section in
    ember)
      bench $D/l8-q4f16-ws 128,512,2048,4096,8000
      bench $D/l8-q0f16 128,512,2048,4096,8000
      bench $D/l8-q4f16 128,512
      timeout 90 /tmp/ember_rt bench $D/l8-q4f16-ws --device cuda --prefill 128 --batch 1 --steps 16 --repeats 1 \
        --profile --output "$OUT/profile-l8-q4f16-ws.jsonl" > "$OUT/profile.log" 2>&1
      echo "profile rc=$? $(( $(date +%s)-t0 ))s"; tail -30 "$OUT/profile.log" ;;
    gemma)
      G=/tmp/gk; mkdir -p $G && tar xJf .carry/g/gemma.tar.xz -C $G
      timeout 120 python3 tools/prefill_attention_check.py "$OUT/prefill-attention.jsonl" > "$OUT/prefill-attention.log" 2>&1
      echo "prefill_attention_check rc=$? $(( $(date +%s)-t0 ))s"
      python3 -c "
import json
rows = [json.loads(l) for l in open('$OUT/prefill-attention.jsonl')]
bad = [r for r in rows if r.get('ok') is False]
print(len(rows), 'rows', len(bad), 'failed', [(r['case'], r['window'], r['by_sign'], r['softcap'], r['max_err']) for r in bad][:6])
print([r for r in rows if 'timing' in r])" 2>&1 | tail -3
      PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1 timeout 150 python3 tools/gemv_parity.py check $G/gp \
        > "$OUT/gemma-parity.jsonl" 2> "$OUT/gemma-parity.err"; echo "gemv_parity gemma rc=$? $(( $(date +%s)-t0 ))s"
      cut -c1-600 "$OUT/gemma-parity.jsonl"; tail -3 "$OUT/gemma-parity.err"
      bench $G/g2-2b 128,512,2048 ;;
    peer)
      PROMPTS=${PROMPTS:-128,512,2048,4096,8000} NPL=1,16 timeout 560 bash benchmarks/gpu.sh peer $D F16 Q4_0 \
        > "$OUT/peer.log" 2>&1; echo "peer rc=$? $(( $(date +%s)-t0 ))s"
      grep -h '"avg_ts"' "$OUT/llamacpp.jsonl" 2>/dev/null | python3 -c "
import json, sys
for l in sys.stdin:
    r = json.loads(l); print('llama.cpp', r.get('model_type'), 'pp', r.get('n_prompt'), 'tg', r.get('n_gen'), round(r['avg_ts'], 1))"
      tail -3 "$OUT/peer.log" ;;
  esac
done
