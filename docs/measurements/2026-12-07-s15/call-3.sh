#!/usr/bin/env bash
# Session 16, after call 2 (call-2/: the tiny gemma2/phi3/mixtral q4f16_1 parity passes with the index_or_zero fix,
# initcheck 0 errors, the K-quant GGUF passes). Call 2's tp-nccl kit was stale (built before the fix and without
# the NCCL collectives), and its llama3-8b kits lacked verify/golden.safetensors, which every load checks by size.
# 1. tp-nccl-one-gpu-call.sh with the kit rebuilt from main (tools/prepare_tp_nccl_gpu.sh).
# 2. llama3-8b q4f16_1 (random weights) decode b1/b16, the commit before the fix vs main, same warm GPU: the
#    golden file (read only by `ember verify`) is a sparse placeholder of its recorded size.
# Lead: run { carry: [".carry/fix15", ".carry/tp-nccl"], command: "bash docs/measurements/2026-12-07-s15/call-3.sh" }
set -u
FINAL_OUT=$OUT; OUT=/tmp/o; mkdir -p $OUT; trap 'tar czf $FINAL_OUT/all.tgz -C /tmp/o .' EXIT
repo=$PWD; D=/tmp/fix15
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
mkdir -p /tmp/o/tpn && OUT=/tmp/o/tpn bash docs/measurements/tp-nccl-one-gpu-call.sh
mkdir -p $D && tar xJf .carry/fix15/kit.tar.xz -C $D
export PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1
for v in old new; do
  a=$D/l8-$v; mkdir -p $a/verify
  truncate -s "$(python3 -c "import json; print(json.load(open('$a/manifest.json'))['sizes']['verify/golden.safetensors'])")" \
    $a/verify/golden.safetensors
done
cat > /tmp/ember_rt <<SH
#!/usr/bin/env bash
exec python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "\$@"
SH
chmod +x /tmp/ember_rt
for v in old new old new; do  # interleaved, same warm GPU: the fix's cost on llama3-8b q4f16_1 decode
  timeout 90 /tmp/ember_rt bench $D/l8-$v --device cuda --batch 1,16 --steps 64 --repeats 3 \
    --output "$OUT/bench-$v.jsonl" > "$OUT/bench-$v.log" 2>&1; echo "bench $v rc=$?"; tail -n 2 "$OUT/bench-$v.log"
  python3 -c "
import json; print('$v', json.dumps({r['metric']: round(r['value'], 1) for r in map(json.loads, open('$OUT/bench-$v.jsonl')) if 'metric' in r and 'tok_s' in r['metric']}))"
done
