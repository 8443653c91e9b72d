#!/usr/bin/env bash
# Tensor parallelism on one GPU (issue 16 part 2; no NCCL, no second GPU needed), one call (~1-2 min): built here by
# tools/prepare_tp_gpu.sh into .carry/tp/kit.tar.xz. tools/tensor_parallel_one_gpu.py check runs each sharded cuda
# build's shards one after the other on cuda:0 (a thread each, all-reduce / all-gather summed on the device by
# torch over DLPack, or on the host when torch lacks CUDA: the JSON says which) against the unsharded cuda build:
# chunked prefill (every position), 16 decode1 steps, 3 sequences of batched decode; q0f16 and q4f16_1, 2 and 4
# shards. Then `ember run --devices cuda:0-1` on a 2-shard build, which must refuse in one line (one GPU here).
# Superseded by tp-nccl-one-gpu-call.sh (this check, plus ember's NCCL collectives on one GPU).
# Lead: run { carry: [".carry/tp"], command: "bash docs/measurements/tp-one-gpu-call.sh", timeout_s: 300 }.
set -u
repo=$PWD; D=/tmp/tp
mkdir -p $D && tar xJf .carry/tp/kit.tar.xz -C $D
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
t0=$(date +%s)
PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1 timeout 200 python3 tools/tensor_parallel_one_gpu.py check \
  $D/tp > "$OUT/tp-one-gpu.jsonl" 2> "$OUT/tp-one-gpu.err"; echo "check rc=$? $(( $(date +%s)-t0 ))s"
cat "$OUT/tp-one-gpu.jsonl"; tail -5 "$OUT/tp-one-gpu.err"
PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1 python3 -c "import sys; sys.argv[0] = 'ember'; \
from ember.cli import main; main()" run $D/tp/q0f16/tp2 --prompt-ids 1,2,3 -n 4 --devices cuda:0-1 2>&1 | tail -2
