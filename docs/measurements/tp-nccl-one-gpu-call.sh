#!/usr/bin/env bash
# Tensor parallelism's GPU path on ONE GPU (issue 16 part 2), one call (~2-3 min); kit built here by
# tools/prepare_tp_nccl_gpu.sh into .carry/tp-nccl/kit.tar.xz.
# 1. tools/nccl_one_gpu.py: ember's NCCL collectives as compiled into a cuda --tensor-parallel 2 build's model.so,
#    libnccl found by ember (the nvidia-nccl-cu13 wheel of this python, else the system's), a 1-rank communicator on
#    cuda:0: all-reduce (sum, max) and all-gather of fp16/bf16/fp32 tensors are the identity, exact; the one-line
#    errors. (NCCL takes one rank per GPU: more ranks need more GPUs, docs/measurements/tp-multi-gpu-call.sh.)
# 2. tools/tensor_parallel_one_gpu.py check: the sharded cuda kernels, every shard on cuda:0 with the host
#    collectives (torch over DLPack), against the unsharded build (the check of session 14, now on ember's
#    persistent shard threads).
# 3. `ember run --devices` on the NCCL build: one GPU for 2 shards must be refused in one line.
# Lead: run { carry: [".carry/tp-nccl"], command: "bash docs/measurements/tp-nccl-one-gpu-call.sh", timeout_s: 400 }.
set -u
repo=$PWD; D=/tmp/tpn
mkdir -p $D && tar xJf .carry/tp-nccl/kit.tar.xz -C $D
mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import importlib.util as u; s = u.find_spec('nvidia.nccl'); print('nvidia.nccl:', s and list(s.submodule_search_locations))" 2>&1 | tee -a "$OUT/gpu.txt"
export PYTHONPATH=/tmp/ember-pkgs:$D/tvm_rt TVM_USE_RUNTIME_LIB=1
t0=$(date +%s)
timeout 120 python3 tools/nccl_one_gpu.py $D/nccl/tp2 > "$OUT/nccl-one-gpu.jsonl" 2> "$OUT/nccl-one-gpu.err"
echo "nccl_one_gpu rc=$? $(( $(date +%s)-t0 ))s"; cat "$OUT/nccl-one-gpu.jsonl"; tail -5 "$OUT/nccl-one-gpu.err"
t0=$(date +%s)
timeout 200 python3 tools/tensor_parallel_one_gpu.py check $D/tp > "$OUT/tp-one-gpu.jsonl" 2> "$OUT/tp-one-gpu.err"
echo "tp_one_gpu rc=$? $(( $(date +%s)-t0 ))s"; cat "$OUT/tp-one-gpu.jsonl"; tail -5 "$OUT/tp-one-gpu.err"
ember() { python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "$@"; }
ember run $D/nccl/tp2 --prompt-ids 1,2,3 -n 4 --devices cuda:0-1 2>&1 | tail -2
ember run $D/nccl/tp2 --prompt-ids 1,2,3 -n 4 --devices cuda:0,0 2>&1 | tail -2
