#!/usr/bin/env bash
# Tensor parallelism over several GPUs with NCCL (issue 16 part 2). NOT RUN YET: only one-GPU machines have been
# lent so far. Kit built here by tools/prepare_tp_multi_gpu.sh into .carry/tp-multi/kit.tar.xz.
# tools/tensor_parallel_multi_gpu.py check: for each build whose shard count fits the GPUs present,
#   1. tiny llama TP=2/4/8 on cuda:0-(N-1) (ember's NCCL collectives, one shard thread per GPU) against the
#      unsharded build on cuda:0: chunked prefill, decode1, batched decode; max error over the logit scale, top-1;
#   2. `ember bench` of llama3-70b-shaped q4f16_1 random-weight builds: TP1 (cuda:0) and TP=N: prefill 512,
#      decode b1 and b16.
# JSON lines in $OUT/tp-multi.jsonl. Lead: run { kind: "nvidia-h100-x8" (or -x4 / -x2: larger shard counts are
# skipped), carry: [".carry/tp-multi"], command: "bash docs/measurements/tp-multi-gpu-call.sh", timeout_s: 600 }.
set -u
repo=$PWD; D=/tmp/tpm
mkdir -p $D && tar xJf .carry/tp-multi/kit.tar.xz -C $D
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
nvidia-smi topo -m >> "$OUT/gpu.txt" 2>&1
export PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1
t0=$(date +%s)
timeout 560 python3 tools/tensor_parallel_multi_gpu.py check $D/tp > "$OUT/tp-multi.jsonl" 2> "$OUT/tp-multi.err"
echo "tp_multi rc=$? $(( $(date +%s)-t0 ))s"; cat "$OUT/tp-multi.jsonl"; tail -5 "$OUT/tp-multi.err"
