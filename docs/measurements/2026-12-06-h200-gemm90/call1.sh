#!/usr/bin/env bash
# session 11 call 1: ember's own sm_90a fp16/bf16 GEMM (alone vs cuBLAS, in tiny models vs their cpu builds, in
# llama3-8b q0f16 beside the same model on CUTLASS 3), and the warp-specialized 4-bit tiles alone
# SHORT=1: only the fp16 kernel check and the q0f16 A/B (about 4 minutes)
set -u
repo=$PWD
mkdir -p /tmp/run && tar xJf .carry/h/kit.tar.xz -C /tmp/run
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
(ls /usr/bin/python3* /usr/local/bin/python3* 2>/dev/null; python3 --version; which uv conda 2>/dev/null) > "$OUT/pythons.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader > "$OUT/gpu.txt"; cat "$OUT/gpu.txt" "$OUT/pythons.txt"
cat > /tmp/ember_rt <<'SH'
#!/usr/bin/env bash
PYTHONPATH=/tmp/ember-pkgs:/tmp/run/tvm_rt TVM_USE_RUNTIME_LIB=1 \
  exec python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "$@"
SH
chmod +x /tmp/ember_rt
t0=$(date +%s)
timeout 120 python3 tools/prefill_gemm_check.py kernel "$OUT/gemm90.jsonl" > /tmp/gemm90.log 2>&1; echo "gemm90 rc=$? $(( $(date +%s)-t0 ))s"
tail -2 /tmp/gemm90.log; grep -v '"ok": true' /tmp/gemm90.log | head -5
[ -n "${SHORT:-}" ] || timeout 200 python3 tools/qgemm_check.py "$OUT/qgemm-ws.jsonl" --ms 1,77,128,512,2048 \
  --tiles ws2x128s6,ws1x128s6b2,ws1x64s6b2,ws2x64s6,ws2x128s6-k2,ws2x128s6-k4,ws1x128s6b2-k2,rs2x128s4b2,rs2x128s4-k4,wg128x256s4 \
  > /tmp/qgemm.log 2>&1; echo "qgemm rc=$? $(( $(date +%s)-t0 ))s"; tail -1 /tmp/qgemm.log; grep '"ok": false' /tmp/qgemm.log | head -3
[ -n "${SHORT:-}" ] || PYTHONPATH=/tmp/ember-pkgs:/tmp/run/tvm_rt TVM_USE_RUNTIME_LIB=1 timeout 90 python3 tools/gemv_parity.py check /tmp/run/parity \
  > "$OUT/parity.jsonl" 2> /tmp/parity.err; echo "parity rc=$? $(( $(date +%s)-t0 ))s"; tail -3 /tmp/parity.err
for a in l8-q0f16 l8-q0f16-cutlass; do
  timeout 60 /tmp/ember_rt verify /tmp/run/$a --device cuda --json > "$OUT/verify-$a.json" 2>&1; echo "verify $a rc=$?"; head -c 300 "$OUT/verify-$a.json"; echo
  timeout 80 /tmp/ember_rt bench /tmp/run/$a --device cuda --prefill 128,512,2048,4096,8000 --batch 1 --steps 32 --repeats 3 \
    --output "$OUT/bench-$a.jsonl" > /dev/null 2>&1; echo "bench $a rc=$? $(( $(date +%s)-t0 ))s"
done
python3 - <<'PY'
import json, os
o = os.environ["OUT"]
rows = [json.loads(l) for l in open(o + "/gemm90.jsonl")]
for r in rows:
    if "tflops" in r and r["dtype"] == "float16" and r["m"] in (128, 512, 2048, 4096):
        print("gemm90", r["layer"], r["m"], r["tile"], r["splits"], r["tflops"], r["torch_tflops"], r["ratio"])
q = [json.loads(l) for l in open(o + "/qgemm-ws.jsonl") if l.startswith("{")] if os.path.exists(o + "/qgemm-ws.jsonl") else []
for r in q:
    if r.get("tflops") and r["scheme"] == "q4f16" and r["m"] in (128, 512, 2048):
        print("qgemm", r["layer"], r["m"], r["tile"], r["us"], r["tflops"])
for line in (open(o + "/parity.jsonl") if os.path.exists(o + "/parity.jsonl") else []):
    r = json.loads(line); print("parity", {k: v for k, v in r.items() if not isinstance(v, (list, dict))})
for a in ("l8-q0f16", "l8-q0f16-cutlass"):
    try:
        print(a, json.dumps({r["metric"]: r["value"] for r in map(json.loads, open(f"{o}/bench-{a}.jsonl")) if "metric" in r}))
    except Exception as e: print(a, "ERR", e)
PY
