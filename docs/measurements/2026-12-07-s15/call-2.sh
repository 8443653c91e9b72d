#!/usr/bin/env bash
# Session 15, second GPU call: the guarded-load fix (stream.cuh index_or_zero in lowbatch / gemv / kgemv /
# klowbatch / linear / norm). Call 1 found the q4f16_1 batched-decode fault: initcheck named reads of scales past
# the last row by q4f16_1_lowbatch3's warps without a k-tile (the guarded __ldg hoisted with the unclamped index);
# CUDA_MODULE_LOADING=EAGER, EMBER_CUDA_LOWBATCH=0 or EMBER_CUDA_PDL=0 each hid it. Kit .carry/fix15 (~3 min here):
#   PARITY_BUILDS=cpu,cuda tools/gemv_parity.py build K/parity q4f16_1 gemma2,phi3,mixtral
#   PARITY_BUILDS=cpu,cuda tools/gemv_parity.py build-gguf K/kq tiny-kq.gguf   (tools/kquant_tiny_gguf.py)
#   ember compile --model llama3-8b --target cuda:sm_90 --quant q4f16_1 --random-weights -o K/l8-{new,old}
#   (l8-old from the commit before the fix), K/tvm_rt (tools/make_runtime_subset.py)
# Lead: run { carry: [".carry/fix15", ".carry/tp-nccl"], command: "bash docs/measurements/2026-12-07-s15/call-2.sh" }
set -u
FINAL_OUT=$OUT; OUT=/tmp/o; mkdir -p $OUT; trap 'tar czf $FINAL_OUT/all.tgz -C /tmp/o .' EXIT
repo=$PWD; D=/tmp/fix15
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
mkdir -p $D && tar xJf .carry/fix15/kit.tar.xz -C $D
export PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1
summary() { python3 -c "
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l); c = r['cuda']
    print(r['model'], r['scheme'], 'ok', r['ok'], {k: round(v, 5) for k, v in c.items() if 'err' in k})" "$1"; }
for p in parity; do
  t0=$(date +%s)
  timeout 150 python3 tools/gemv_parity.py check $D/$p > "$OUT/$p.jsonl" 2> "$OUT/$p.err"
  echo "$p rc=$? $(( $(date +%s)-t0 ))s"; summary "$OUT/$p.jsonl"; tail -n 2 "$OUT/$p.err"
done
# issue 16: ember's NCCL collectives with a 1-rank communicator, the one-GPU sharded check on the persistent shard
# threads, --devices refusals (kit .carry/tp-nccl, tools/prepare_tp_nccl_gpu.sh)
mkdir -p /tmp/o/tpn && OUT=/tmp/o/tpn bash docs/measurements/tp-nccl-one-gpu-call.sh
mkdir -p /tmp/g && mv $D/parity/gemma2 /tmp/g/
timeout 100 /usr/local/cuda/bin/compute-sanitizer --tool initcheck --print-limit 4 python3 tools/gemv_parity.py \
  check /tmp/g > "$OUT/g-initcheck.txt" 2>&1; echo "initcheck rc=$?"
grep -E "ERROR SUMMARY|Uninitialized|at .*kernel" "$OUT/g-initcheck.txt" | sort | uniq -c | head -8
timeout 60 python3 tools/gemv_parity.py check $D/kq > "$OUT/kq.jsonl" 2> "$OUT/kq.err"; echo "kq rc=$?"; summary "$OUT/kq.jsonl"
cat > /tmp/ember_rt <<SH
#!/usr/bin/env bash
exec python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "\$@"
SH
chmod +x /tmp/ember_rt
for v in old new; do  # same warm GPU: the fix's cost on llama3-8b q4f16_1 decode
  timeout 80 /tmp/ember_rt bench $D/l8-$v --device cuda --batch 1,16 --steps 64 --repeats 3 \
    --output "$OUT/bench-$v.jsonl" > "$OUT/bench-$v.log" 2>&1; echo "bench $v rc=$?"
  python3 -c "
import json; print('$v', json.dumps({r['metric']: round(r['value'], 1) for r in map(json.loads, open('$OUT/bench-$v.jsonl')) if 'metric' in r and 'tok_s' in r['metric']}))"
done
