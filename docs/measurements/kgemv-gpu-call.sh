#!/usr/bin/env bash
# Issue 15 part 3: kgemv.cuh (decode1) and klowbatch.cuh (batched decode) for the GGUF formats kept native, on the
# lent GPU in one call (~6-7 min). Everything is compiled on the build box into .carry/kg/kit.tar.xz:
#   tvm_rt/     python tools/make_runtime_subset.py DIR/tvm_rt --python-version 3.12   (runtime-only TVM)
#   bench/      python tools/kgemv_bench.py build DIR/bench   (201 kernels: every format x Q4_K_M shape x swept
#               launch config, kgemv and klowbatch, dlight's batched q4_k lowering, ember's q4f16 GEMV / low-batch
#               GEMM of the same shapes)
#   parity/     python tools/kquant_tiny_gguf.py T.gguf && python tools/gemv_parity.py build-gguf DIR/parity T.gguf
#               (cpu / cuda / cuda-graph / cuda-stock builds of the tiny Q4_K_M-like GGUF: Q4_K, Q5_K, Q6_K, Q5_0,
#               Q5_1 tensors; cuda = kgemv at decode1 AND klowbatch in the batched decode)
#   l8-q4_k_m/  ember compile --model llama3-8b --quant q4_k_m --random-weights --target cuda:sm_90 (optional)
# Steps: 1. kgemv_bench: every kernel vs torch (packed arrays dequantized on the GPU; the dequant is checked against
# gguf.quants.dequantize by tests/targets/test_cuda_kgemv.py), then timings (batch 1, then 16, 4, 32, 2, 8 while
# BUDGET lasts); 2. tiny-model parity vs the cpu build (decode1, batched decode, graphs, chunked prefill);
# 3. `ember bench` of the 8B Q4_K_M artifact (decode b1 / b16, pp512) if the kit has it (L8=0 skips).
# Read: kgemv-pick.txt (per kernel and batch, the config with the least Q4_K_M step time for K <= 8192 and for
# K > 8192: what choose_config in native_kgemv.py / native_klowbatch.py should return), kgemv.log's tables ("best" per format/shape/batch beside the default config, ember's q4f16 kernel and
# dlight), "failures: 0", parity.jsonl's "ok": true lines, bench's decode tok/s (target: b1 >= 345 on an H100 =
# 1.3x llama.cpp's 265; b16 >> 553).
set -u
repo=$PWD; D=/tmp/kg
mkdir -p $D && tar xJf .carry/kg/kit.tar.xz -C $D
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$OUT/gpu.txt"
export PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1
cat > /tmp/ember_rt <<SH
#!/usr/bin/env bash
exec python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "\$@"
SH
chmod +x /tmp/ember_rt
t0=$(date +%s)
timeout 330 python3 tools/kgemv_bench.py run $D/bench "$OUT/kgemv.jsonl" --budget "${BUDGET:-190}" > "$OUT/kgemv.log" 2>&1
echo "kgemv_bench rc=$? $(( $(date +%s)-t0 ))s"; grep -v '^{' "$OUT/kgemv.log" | tail -75
python3 tools/kgemv_bench.py pick "$OUT/kgemv.jsonl" | tee "$OUT/kgemv-pick.txt"
timeout 120 python3 tools/gemv_parity.py check $D/parity > "$OUT/parity.jsonl" 2> "$OUT/parity.err"
echo "parity rc=$? $(( $(date +%s)-t0 ))s"; cut -c1-400 "$OUT/parity.jsonl"; tail -5 "$OUT/parity.err"
if [ "${L8:-1}" != 0 ] && [ -d $D/l8-q4_k_m ]; then
  timeout 150 /tmp/ember_rt bench $D/l8-q4_k_m --device cuda --prefill 512 --batch 1,16 --steps 64 --repeats 3 \
    --output "$OUT/bench-l8-q4_k_m.jsonl" > "$OUT/bench.log" 2>&1; echo "bench rc=$? $(( $(date +%s)-t0 ))s"
  python3 -c "
import json; print('l8-q4_k_m', json.dumps({r['metric']: r['value'] for r in map(json.loads, open('$OUT/bench-l8-q4_k_m.jsonl')) if 'metric' in r}))"
  tail -3 "$OUT/bench.log"
fi
