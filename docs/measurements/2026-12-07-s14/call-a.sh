#!/usr/bin/env bash
# Session 14, issue 15 on the lent GPU: the MoE grouped GEMM and Phi-3 (kit: tools/prepare_moe_gpu.sh ->
# .carry/moe/kit.tar.xz). SECTIONS (space list, default all): 
#   parity  tools/gemv_parity.py check of tiny mixtral / qwen3_moe / phi3 builds (cuda, cuda-graph vs cpu)
#   mixtral ember verify + bench of mixtral-8x7b q4f16 (random weights); on a fault, the same run again with
#           CUDA_LAUNCH_BLOCKING=1 to name the kernel
#   qwen3   qwen3-30b-a3b q4f16, grouped (default) and per-slot (EMBER_CUDA_MOE=slots build) plans; decode profile
#   dense   llama3-8b q4f16 and phi-3-mini-4k q4f16: verify + bench
#   sanitize tiny phi3 q4f16_1 (batched decode faulted in call 1) under compute-sanitizer, alone
# PARITY_SKIP (space list of parity/<model> folders to leave out of the parity section)
# Lead: run { carry: [".carry/moe"], command: "SECTIONS='parity mixtral' bash docs/measurements/2026-12-07-s14/call-a.sh" }
set -u
SECTIONS=${SECTIONS:-parity mixtral qwen3 dense}
repo=$PWD; D=/tmp/moe
if [ ! -d $D/tvm_rt ]; then mkdir -p $D && tar xJf .carry/moe/kit.tar.xz -C $D; fi
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
export PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1
cat > /tmp/ember_rt <<SH
#!/usr/bin/env bash
exec python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "\$@"
SH
chmod +x /tmp/ember_rt
t0=$(date +%s)
has() { case " $SECTIONS " in *" $1 "*) return 0;; esac; return 1; }
summary() {  # artifact label, rows file
  python3 -c "
import json, sys
rows = [json.loads(l) for l in open('$2') if l.startswith('{')]
print('$1', json.dumps({r['metric']: r['value'] for r in rows if 'metric' in r}))" 2>/dev/null || echo "$1: no rows"
}
bench() {  # artifact dir, label, extra args...
  local a=$1 label=$2; shift 2
  timeout 100 /tmp/ember_rt verify $a --device cuda --json > "$OUT/verify-$label.json" 2>&1
  echo "verify $label rc=$? ok=$(grep -o '"ok": [a-z]*' "$OUT/verify-$label.json" | head -1) $(( $(date +%s)-t0 ))s"
  timeout 150 /tmp/ember_rt bench $a --device cuda --repeats 3 --output "$OUT/bench-$label.jsonl" "$@" \
    > "$OUT/bench-$label.log" 2>&1
  local rc=$?; echo "bench $label rc=$rc $(( $(date +%s)-t0 ))s"; tail -2 "$OUT/bench-$label.log"
  summary $label "$OUT/bench-$label.jsonl"
  return $rc
}
if has parity; then
  for m in ${PARITY_SKIP:-}; do [ -d $D/parity/$m ] && mkdir -p $D/skipped && mv $D/parity/$m $D/skipped/; done
  timeout 240 python3 tools/gemv_parity.py check $D/parity > "$OUT/parity.jsonl" 2> "$OUT/parity.err"
  echo "parity rc=$? $(( $(date +%s)-t0 ))s"; cat "$OUT/parity.jsonl"; tail -4 "$OUT/parity.err"
fi
if has mixtral; then
  if ! bench $D/mixtral-8x7b-q4f16 mixtral-8x7b --prefill 128,512,2048 --batch 1,16 --steps 32; then
    CUDA_LAUNCH_BLOCKING=1 timeout 120 /tmp/ember_rt bench $D/mixtral-8x7b-q4f16 --device cuda --prefill 128 \
      --batch 1 --steps 8 --repeats 1 --verbose > "$OUT/mixtral-blocking.log" 2>&1
    echo "blocking rc=$?"; grep -iE "error|kernel|illegal|Traceback" "$OUT/mixtral-blocking.log" | head -12
  fi
fi
if has qwen3; then
  bench $D/qwen3-30b-a3b-q4f16 qwen3-30b-a3b --prefill 128,512,2048 --batch 1,16 --steps 32
  [ -d $D/qwen3-30b-a3b-q4f16-slots ] && bench $D/qwen3-30b-a3b-q4f16-slots qwen3-30b-a3b-slots --prefill 128,512 --batch 1,16 --steps 32
  timeout 120 /tmp/ember_rt bench $D/qwen3-30b-a3b-q4f16 --device cuda --prefill 512 --batch 1,16 --steps 16 \
    --repeats 1 --profile > "$OUT/profile-qwen3.log" 2>&1; echo "profile rc=$?"
  grep -A14 -iE "top kernels|decode step" "$OUT/profile-qwen3.log" | head -60
fi
if has dense; then
  bench $D/llama3-8b-q4f16 llama3-8b --prefill 128,512 --batch 1,16 --steps 64
  bench $D/phi-3-mini-4k-q4f16 phi-3-mini-4k --prefill 128,512 --batch 1,16 --steps 64
fi
if has sanitize; then
  src=$D/parity/phi3; [ -d $src ] || src=$D/skipped/phi3
  mkdir -p /tmp/san/phi3 && cp -r $src/q4f16_1 /tmp/san/phi3/
  timeout 200 /usr/local/cuda/bin/compute-sanitizer --print-limit 4 python3 tools/gemv_parity.py check /tmp/san \
    > "$OUT/phi3-san.jsonl" 2> "$OUT/phi3-san.err"; echo "sanitizer rc=$?"
  cat "$OUT/phi3-san.jsonl"; grep -E "Invalid|Address|thread|in |ERROR SUMMARY" "$OUT/phi3-san.err" | head -24
  CUDA_LAUNCH_BLOCKING=1 timeout 100 python3 tools/gemv_parity.py check /tmp/san > "$OUT/phi3-blocking.jsonl" \
    2> "$OUT/phi3-blocking.err"; echo "blocking rc=$?"; tail -3 "$OUT/phi3-blocking.err"
fi
echo "done $(( $(date +%s)-t0 ))s"; nvidia-smi --query-gpu=memory.used --format=csv,noheader
