#!/usr/bin/env bash
# GPU benchmark recipe (issue 11's table): ember beside llama.cpp on one NVIDIA GPU, Llama-3-8B shapes, random
# weights (labelled as such). The GPU box needs python3 + numpy (+ torch for --profile and the random GGUF), nvcc
# and cmake for llama.cpp; it needs no TVM compiler and no network.
#   here:     bash benchmarks/gpu.sh build DIR [QUANTS...]  runtime-only TVM (DIR/tvm_rt), artifacts DIR/l8-<quant>
#                                                           (default q4f16 q4f16_1 q0f16), llama.cpp source DIR/lcpp-src.tgz
#   GPU box:  bash benchmarks/gpu.sh peer DIR [QUANTS...]   build llama.cpp (~5 min, kept in DIR/lcpp), llama-bench +
#                                                           llama-batched-bench on random GGUFs (default F16 Q4_0;
#                                                           PROMPTS: llama-bench -p, default 128,512)
#             bash benchmarks/gpu.sh ember DIR [QUANTS...]  ember verify (hashes + golden logits), then ember bench of
#                                                           each artifact: prefill (PREFILL, default 128,512), decode batch
#                                                           1..64 (BATCHES), decode at context 128/2048/8000
#                                                           (CONTEXTS), the kernel profile at batch 1 and 16 (PROFILE=1)
#   here:     ember bench --plot decode.png --from DIR/results  the batch curve of every engine, with the rooflines
# Both GPU commands print JSON lines (also written under ${OUT:-DIR/results}).
set -euo pipefail
cmd=${1:?usage: gpu.sh build|peer|ember DIR [QUANTS...]}; dir=${2:?DIR}; shift 2
here=$(cd "$(dirname "$0")" && pwd); repo=$(dirname "$here")
results=${OUT:-$dir/results}

ember_rt() {  # the runtime-only ember on the GPU box: the repo as package `ember`, TVM's runtime subset
  mkdir -p /tmp/ember-pkgs && ln -sfn "$repo" /tmp/ember-pkgs/ember
  PYTHONPATH=/tmp/ember-pkgs:$dir/tvm_rt TVM_USE_RUNTIME_LIB=1 \
    python3 -c "import sys; sys.argv[0] = 'ember'; from ember.cli import main; main()" "$@"
}

case $cmd in
  build)
    quants=${*:-q4f16 q4f16_1 q0f16}
    mkdir -p "$dir"
    [ -d "$dir/tvm_rt" ] || python "$repo/tools/make_runtime_subset.py" "$dir/tvm_rt"
    for q in $quants; do
      ember compile --model llama3-8b --target cuda:sm_90 --quant "$q" --random-weights -o "$dir/l8-$q" --force
    done
    if [ ! -f "$dir/lcpp-src.tgz" ]; then  # llama.cpp's tree from the llama-cpp-python sdist, trimmed to ~8 MB
      tmp=$(mktemp -d); pip download -q --no-deps --no-binary :all: llama-cpp-python -d "$tmp"
      mkdir "$tmp/src"; tar xzf "$tmp"/llama_cpp_python-*.tar.gz --strip-components=3 -C "$tmp/src" --wildcards '*/vendor/llama.cpp/*'
      (cd "$tmp/src" && rm -rf models docs benches tests vendor/llama.cpp tools/ui ggml/src/ggml-sycl ggml/src/ggml-vulkan ggml/src/ggml-opencl)
      tar czf "$dir/lcpp-src.tgz" -C "$tmp/src" .; rm -rf "$tmp"
    fi ;;
  peer)
    quants=${*:-F16 Q4_0}
    work=$dir/lcpp; mkdir -p "$work/src" "$results"; cd "$work"
    [ -f src/CMakeLists.txt ] || tar xzf "$dir/lcpp-src.tgz" -C src
    if [ ! -x build/bin/llama-bench ]; then
      cmake -S src -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release >build.log 2>&1
      cmake --build build --target llama-bench llama-batched-bench llama-quantize -j"$(nproc)" >>build.log 2>&1 \
        || { tail -30 build.log; exit 1; }
    fi
    [ -f F16.gguf ] || python3 "$here/peers/llamacpp_random_gguf.py" F16.gguf --gguf-py src/gguf-py
    for q in $quants; do
      [ "$q" = F16 ] || [ -f "$q.gguf" ] || build/bin/llama-quantize F16.gguf "$q.gguf" "$q" "$(nproc)" >"quant-$q.log" 2>&1
      build/bin/llama-bench -m "$q.gguf" -ngl 99 -fa 1 -p "${PROMPTS:-128,512}" -n 128 -r 3 -o jsonl | tee -a "$results/llamacpp.jsonl"
      build/bin/llama-batched-bench -m "$q.gguf" -ngl 99 -fa on -c 20480 -b 2048 -ub 512 -npp 128 -ntg 128 \
        -npl "${NPL:-1,4,16,64}" --output-format jsonl 2>&1 | grep '^{' | sed "s/^{/{\"model\": \"$q\", /" \
        | tee -a "$results/llamacpp-batched.jsonl"
    done ;;
  ember)
    quants=${*:-q4f16 q4f16_1 q0f16}
    mkdir -p "$results"
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$results/gpu.txt"
    for q in $quants; do
      # the artifact's own check first: file hashes and its golden logits (a 2-layer truncation vs the cpu build)
      ember_rt verify "$dir/l8-$q" --device cuda --json > "$results/verify-$q.json" || echo "verify $q FAILED"
      cat "$results/verify-$q.json"; echo
      ember_rt bench "$dir/l8-$q" --device cuda --prefill "${PREFILL:-128,512}" --batch "${BATCHES:-1,2,4,8,16,32,64}" --steps 64 \
        --repeats 3 --output "$results/ember-$q.jsonl" >/dev/null
      cat "$results/ember-$q.jsonl"
      if [ -n "${CONTEXTS-128,2048,8000}" ]; then  # decode at batch 1 after long prompts (a cache of batch 1:
        # 8000 + 64 steps fits llama3-8b's 8192); rows decode_ctx{N}_b1_tok_s; CONTEXTS= turns it off
        ember_rt bench "$dir/l8-$q" --device cuda --prefill 128 --batch 1 --context "${CONTEXTS-128,2048,8000}" \
          --steps 64 --repeats 3 --output "$results/ember-ctx-$q.jsonl" >/dev/null
        cat "$results/ember-ctx-$q.jsonl"
      fi
      if [ -n "${PROFILE:-}" ]; then  # the top kernels of a decode step at batch 1 and 16 (needs torch)
        ember_rt bench "$dir/l8-$q" --device cuda --prefill 128 --batch 1,16 --steps 32 --repeats 1 --profile \
          --output "$results/profile-$q.jsonl" >/dev/null
      fi
    done ;;
  *) echo "gpu.sh: unknown command '$cmd' (build | peer | ember)" >&2; exit 2 ;;
esac
