#!/usr/bin/env bash
# Decode throughput of a llama3-8b q4f16 random-weight artifact on one GPU: the direct engine (`ember bench`,
# batch 1/16/64) beside `ember serve` with 1/16/64 concurrent streams (tools/serve_load.py: 128-token prompts,
# 128 greedy tokens each, ignore_eos). JSON lines on stdout and under $OUT. Layout on the GPU box (the `run` tool's
# carry): .carry/NAME/{serve_gpu.sh, ember (this package, without .venv/.git/tests), l8-q4f16 (ember compile
# --model llama3-8b --target cuda:sm_90 --quant q4f16 --random-weights), wheels (pure-python starlette, uvicorn,
# anyio, sniffio, idna, h11, click, prometheus-client, typing_extensions)} and .carry/tvm_rt; from the repo root:
#   bash .carry/NAME/serve_gpu.sh
# A trial on a cpu box: TVM_RT= PYTHON=.venv/bin/python ART=DIR DEVICE=cpu VOCAB=300 CONTEXT=64 PROMPT=16 ...
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${OUT:-$here/results}; mkdir -p "$out"
mkdir -p /tmp/pkgs && ln -sfn "$here/ember" /tmp/pkgs/ember
wheels=$(ls "$here"/wheels/*.whl | tr '\n' ':')  # pure-python starlette/uvicorn/... after what the box has
rt=${TVM_RT-$root/.carry/tvm_rt}  # TVM_RT= (empty): the python's own TVM, for a trial run on a cpu box
export PYTHONPATH=/tmp/pkgs${rt:+:$rt}:${wheels%:}
[ -z "$rt" ] || export TVM_USE_RUNTIME_LIB=1
ember() { $py -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "$@"; }
art=${ART:-$here/l8-q4f16}; device=${DEVICE:-cuda}; vocab=${VOCAB:-128000}; py=${PYTHON:-python3}
ctx=${CONTEXT:-512}; prompt=${PROMPT:-128}; maxtok=${MAX_TOKENS:-128}
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"

timeout 70 $py -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" bench "$art" --device $device --prefill $prompt --batch 1,16,64 --steps 64 --repeats 2 \
  --output "$out/bench.jsonl" > "$out/bench.log" 2>&1 || { echo "ember bench failed"; tail -5 "$out/bench.log"; }
cat "$out/bench.jsonl" 2>/dev/null

port=8123
$py -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" serve "$art" --device $device --port $port --max-batch 64 --context-length $ctx --kv-tokens $((64 * ctx)) \
  --no-prefix-cache > "$out/serve.log" 2>&1 &
pid=$!
for _ in $(seq 240); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.25
done
timeout 90 $py "$here/ember/tools/serve_load.py" --url http://127.0.0.1:$port --streams 1,16,64 --prompt $prompt \
  --max-tokens $maxtok --vocab $vocab | tee "$out/serve.jsonl"
python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/health').read().decode())" \
  | tee "$out/health.json"
kill -TERM $pid; wait $pid; echo "{\"serve_exit\": $?}" | tee -a "$out/serve.jsonl"
tail -3 "$out/serve.log"
