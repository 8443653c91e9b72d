#!/usr/bin/env bash
# Serving on one GPU, in one call: (1) tools/serve_device_check.py on a tiny cuda artifact (device sampling against
# the host path), (2) the direct engine's decode of a llama3-8b q4f16 random-weight artifact (`ember bench`, batch
# 1/16/64), (3) `ember serve` of the same artifact with 1/16/64 concurrent streams (tools/serve_load.py: 128-token
# prompts, 128 greedy tokens each, ignore_eos), sampling on the host (--host-sampling) and then on the device, and
# the device server with logprobs 5. JSON lines on stdout and under $OUT.
# The kit (KIT=DIR, e.g. unpacked from the `run` tool's carry): DIR/{ember (this package, from git archive),
# tvm_rt (tools/make_runtime_subset.py), wheels (starlette, uvicorn, anyio, sniffio, llguidance), l8-q4f16 (ember
# compile --model llama3-8b --target cuda:sm_90 --quant q4f16 --random-weights), tiny (serve_device_check.py build)}.
# A trial on a cpu box: KIT=DIR TVM_RT= PYTHON=.venv/bin/python ART=DIR DEVICE=cpu VOCAB=300 CONTEXT=64 PROMPT=16
set -uo pipefail
kit=${KIT:?KIT=the kit folder}
out=${OUT:-$kit/results}; mkdir -p "$out"
py=${PYTHON:-python3}
mkdir -p /tmp/pkgs && ln -sfn "$kit/ember" /tmp/pkgs/ember
site=/tmp/serve-site
$py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site "$kit"/wheels/*.whl \
  || echo "wheel install failed"
rt=${TVM_RT-$kit/tvm_rt}  # TVM_RT= (empty): the python's own TVM, for a trial run on a cpu box
export PYTHONPATH=/tmp/pkgs:$site${rt:+:$rt} PYTHONUNBUFFERED=1
[ -z "$rt" ] || export TVM_USE_RUNTIME_LIB=1
ember() { $py -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "$@"; }
art=${ART:-$kit/l8-q4f16}; device=${DEVICE:-cuda}; vocab=${VOCAB:-128000}
ctx=${CONTEXT:-512}; prompt=${PROMPT:-128}; maxtok=${MAX_TOKENS:-128}
load=$kit/ember/tools/serve_load.py
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"

if [ -d "$kit/tiny" ]; then
  timeout ${CHECK_TIMEOUT:-110} $py "$kit/ember/tools/serve_device_check.py" run "$kit/tiny" "$out/check.jsonl" \
    > "$out/check.log" 2>&1; echo "{\"check_rc\": $?}"
  grep -h '"ok": false' "$out/check.jsonl"; grep -h '"check": "all"' "$out/check.jsonl"
fi

timeout 80 $py -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" bench "$art" --device $device \
  --prefill $prompt --batch 1,16,64 --steps 64 --repeats 2 --output "$out/bench.jsonl" > "$out/bench.log" 2>&1 \
  || { echo "ember bench failed"; tail -5 "$out/bench.log"; }
cat "$out/bench.jsonl" 2>/dev/null

port=8123
for mode in host device; do
  flag=; [ $mode = host ] && flag=--host-sampling
  $py -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" serve "$art" --device $device \
    --port $port --max-batch 64 --context-length $ctx --kv-tokens $((64 * ctx)) --no-prefix-cache $flag \
    > "$out/serve-$mode.log" 2>&1 &
  pid=$!
  for _ in $(seq 240); do
    $py -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.25
  done
  timeout 60 $py "$load" --url http://127.0.0.1:$port --streams 1,16,64 --prompt $prompt --max-tokens $maxtok \
    --vocab $vocab --label $mode | tee -a "$out/serve.jsonl"
  if [ $mode = device ]; then
    timeout 40 $py "$load" --url http://127.0.0.1:$port --streams 16,64 --prompt $prompt --max-tokens $maxtok \
      --vocab $vocab --logprobs 5 --label device | tee -a "$out/serve.jsonl"
  fi
  $py -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/health').read().decode())" \
    | tee "$out/health-$mode.json"
  kill -TERM $pid; wait $pid; echo "{\"serve_exit\": $?, \"sampling\": \"$mode\"}" | tee -a "$out/serve.jsonl"
  grep -h "serving" "$out/serve-$mode.log"
  port=$((port + 1))
done
