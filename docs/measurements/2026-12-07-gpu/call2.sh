#!/usr/bin/env bash
# session 12 call 2 (issue 14): cold start of llama3-8b q4f16 from an `ember bundle` made on the build box with
# Python 3.12 (the GPU box's python3): seeded random weights of the true shapes packed into the bundle's artifact
# here (tools/pack_random_weights.py, 4.5 GB), page cache warmed, then process start -> first byte of stdout
set -u
mkdir -p /tmp/b && tar xJf .carry/b/bundle312.tar.xz -C /tmp/b
B=/tmp/b/bundle312
python3 --version; du -sh $B/lib $B/artifact
t0=$(date +%s)
env -i PATH=/usr/bin:/bin PYTHONPATH=$B/lib python3 -S tools/pack_random_weights.py $B/artifact /tmp/packed \
  > "$OUT/pack.log" 2>&1; echo "pack rc=$? $(( $(date +%s)-t0 ))s"; tail -2 "$OUT/pack.log"
rm -rf $B/artifact && mv /tmp/packed $B/artifact && cat $B/artifact/params/* > /dev/null
for i in 1 2 3; do
  env -i PYTHONPATH=$B/lib TVM_USE_RUNTIME_LIB=1 python3 -S -c "import time; t=time.perf_counter(); \
import ember.runtime.engine; from ember.runtime.tvm_import import import_tvm; import_tvm(); \
print('import_s', round(time.perf_counter()-t, 3))"
done | tee "$OUT/import.txt"
python3 - "$B" <<'PY' | tee "$OUT/coldstart.jsonl"
import json, subprocess, sys, time
b = sys.argv[1]
cmd = [f"{b}/bin/ember", "run", f"{b}/artifact", "--device", "cuda", "--prompt-ids", "1,2,3,4,5,6,7,8", "-n", "1"]
for i in range(4):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    first = p.stdout.read(1)
    dt = time.perf_counter() - t
    rest = p.stdout.read(); err = p.stderr.read().decode()[-300:]; p.wait()
    print(json.dumps({"run": i + 1, "first_byte_s": round(dt, 3), "rc": p.returncode,
                      "out": (first + rest).decode(errors="replace")[:80], "err": err if p.returncode else ""}))
PY
