#!/usr/bin/env bash
# session 10 call 2: the RS dispatch in whole models (parity of tiny llama q4f16 / q4f16_1, verify and bench of
# llama3-8b q4f16), ncu of the m=128 gate_up GEMM
set -u
repo=$PWD
mkdir -p /tmp/run && tar xJf .carry/g/kit.tar.xz -C /tmp/run
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
ember_rt() { PYTHONPATH=/tmp/ember-pkgs:/tmp/run/tvm_rt TVM_USE_RUNTIME_LIB=1 \
  python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "$@"; }
t0=$(date +%s)
mkdir -p $OUT/r
PYTHONPATH=/tmp/ember-pkgs:/tmp/run/tvm_rt TVM_USE_RUNTIME_LIB=1 python3 tools/gemv_parity.py check /tmp/run/parity \
  > "$OUT/r/parity.jsonl" 2> /tmp/parity.err; echo "parity rc=$? $(( $(date +%s)-t0 ))s"; tail -3 /tmp/parity.err
ember_rt verify /tmp/run/l8-q4f16 --device cuda --json > /tmp/verify.json 2>&1; echo "verify rc=$?"; head -c 600 /tmp/verify.json; echo
ember_rt bench /tmp/run/l8-q4f16 --device cuda --prefill 128,512,2048,4096,8000 --batch 1,16 --steps 64 --repeats 3 \
  --output "$OUT/r/l8-q4f16-rs.jsonl" > /dev/null 2>&1; echo "bench rc=$? $(( $(date +%s)-t0 ))s"
ember_rt bench /tmp/run/l8-q4f16 --device cuda --prefill 128 --batch 1 --steps 16 --repeats 3 --profile \
  --output "$OUT/r/l8-q4f16-rs-profile.jsonl" > /dev/null 2>&1; echo "profile rc=$? $(( $(date +%s)-t0 ))s"
for tile in wg128x256s4 rs2x128s4b2; do
timeout 120 ncu --clock-control none -k regex:^kernel --launch-count 1 --section SpeedOfLight --section WarpStateStats \
  --section SchedulerStats --section Occupancy --section MemoryWorkloadAnalysis python3 tools/qgemm_check.py /tmp/ncu-$tile.jsonl --tiles $tile \
  --layers gate_up --ms 128 --no-timing > "$OUT/r/ncu-gate_up-$tile.txt" 2>&1; echo "ncu $tile rc=$? $(( $(date +%s)-t0 ))s"
done
python3 - <<'PY'
import json, os
o = os.environ["OUT"] + "/r"
for line in open(o + "/parity.jsonl"):
    r = json.loads(line); print("parity", {k: v for k, v in r.items() if not isinstance(v, (list, dict))})
for f in ("l8-q4f16-rs.jsonl", "l8-q4f16-rs-profile.jsonl"):
    try:
        rows = [json.loads(l) for l in open(f"{o}/{f}")]
        print(f, json.dumps({r["metric"]: r["value"] for r in rows if "metric" in r}))
        for r in rows:
            if "kernel" in r and r.get("tokens") == 128: print("  ", r["kernel"], r["calls_per_step"], r["us_per_step"])
            if r.get("profile") == "prefill": print("  ", r)
    except Exception as e: print(f, "ERR", e)
PY
