#!/usr/bin/env bash
# session 10 call 1: the unverified window kernels (attention check, whole-model parity with a mistral), the 8B
# prefill profile, mistral-7b long prefill, and ncu of the qgemm at m=128
set -u
repo=$PWD
if [ "${1:-a}" = a ]; then mkdir -p /tmp/run && tar xJf .carry/e/kit.tar.xz -C /tmp/run; fi
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader > "$OUT/gpu.txt"
ember_rt() { PYTHONPATH=/tmp/ember-pkgs:/tmp/run/tvm_rt TVM_USE_RUNTIME_LIB=1 \
  python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "$@"; }
t0=$(date +%s)
if [ "${1:-a}" = a ]; then
python3 tools/prefill_attention_check.py "$OUT/pa.jsonl" > "$OUT/pa.log" 2>&1; echo "pa rc=$? $(( $(date +%s)-t0 ))s"
PYTHONPATH=/tmp/ember-pkgs:/tmp/run/tvm_rt TVM_USE_RUNTIME_LIB=1 python3 tools/gemv_parity.py check /tmp/run/parity \
  > "$OUT/parity.jsonl" 2> "$OUT/parity.err"; echo "parity rc=$? $(( $(date +%s)-t0 ))s"
for a in llama3-8b-q4f16 mistral-7b-q4f16; do
  ember_rt verify /tmp/run/$a --device cuda --json > "$OUT/verify-$a.json" 2>&1; echo "verify $a rc=$?"
done
ember_rt bench /tmp/run/llama3-8b-q4f16 --device cuda --prefill 128,512 --batch 1 --steps 32 --repeats 3 --profile \
  --output "$OUT/l8-profile.jsonl" > "$OUT/l8-profile.txt" 2>&1; echo "l8 profile rc=$? $(( $(date +%s)-t0 ))s"
ember_rt bench /tmp/run/mistral-7b-q4f16 --device cuda --prefill 512,4096,8000 --batch 1,16 --steps 64 --repeats 3 \
  --output "$OUT/mistral.jsonl" > "$OUT/mistral.txt" 2>&1; echo "mistral rc=$? $(( $(date +%s)-t0 ))s"
ember_rt bench /tmp/run/llama3-8b-q4f16 --device cuda --prefill 4096,8000 --batch 1 --steps 32 --repeats 3 \
  --output "$OUT/l8-long.jsonl" > "$OUT/l8-long.txt" 2>&1; echo "l8 long rc=$? $(( $(date +%s)-t0 ))s"
fi
if [ "${1:-a}" = b ]; then
python3 tools/qgemm_check.py "$OUT/qgemm-rs.jsonl" --ms 1,77,128,256,512,2048 \
  --tiles rs2x128s4,rs4x128s4,rs2x256s4,rs2x64s4,rs4x64s4,rs2x128s4b2,rs1x128s6b2,rs2x128s4-k2,rs2x128s4-k4,rs4x128s4-k2,wg128x256s4,wg128x128s4-k2,wg128x128s4-k4 \
  > "$OUT/qgemm-rs.log" 2>&1; echo "qgemm rc=$? $(( $(date +%s)-t0 ))s"
tail -1 "$OUT/qgemm-rs.log"
python3 - <<'PY'
import json, os
rows = [json.loads(l) for l in open(os.environ["OUT"] + "/qgemm-rs.jsonl")]
bad = [r for r in rows if not r["ok"]]
print("qgemm bad", len(bad), [(r["scheme"], r["layer"], r["tile"], r["m"], r["rel_err"], r["status"]) for r in bad[:12]])
for r in rows:
    if r.get("tflops") and r["m"] in (128, 512, 2048) and r["scheme"] == "q4f16":
        print(r["layer"], r["tile"], r["m"], r["tflops"], r["us"])
PY
for tile in wg128x256s4 rs4x128s4 rs2x128s4; do
timeout 150 ncu --clock-control none -k regex:qgemm90 --launch-count 1 --section SpeedOfLight --section WarpStateStats \
  --section SchedulerStats --section Occupancy python3 tools/qgemm_check.py "$OUT/ncu-run-$tile.jsonl" --tiles $tile \
  --layers gate_up --ms 128 --no-timing > "$OUT/ncu-gate_up-$tile.txt" 2>&1; echo "ncu $tile rc=$? $(( $(date +%s)-t0 ))s"
done
exit 0
fi
python3 - <<'PY'
import json, os, glob
o = os.environ["OUT"]
for f in ["pa.jsonl", "parity.jsonl"]:
    try:
        for line in open(f"{o}/{f}"):
            r = json.loads(line)
            print(f, {k: v for k, v in r.items() if not isinstance(v, (list, dict))})
    except Exception as e:
        print(f, "ERR", e)
for f in sorted(glob.glob(o + "/verify-*.json")):
    try: print(os.path.basename(f), json.load(open(f)).get("ok"))
    except Exception as e: print(f, "ERR", open(f).read()[-400:])
for f in ["l8-profile.jsonl", "mistral.jsonl", "l8-long.jsonl"]:
    try:
        print(f, json.dumps({json.loads(l)["metric"]: json.loads(l)["value"] for l in open(f"{o}/{f}")}))
    except Exception as e:
        print(f, "ERR", e)
PY
