#!/usr/bin/env bash
# CPU peer: build llama.cpp's llama-bench (CPU only) from the sdist of the PyPI package llama-cpp-python,
# then bench ember's artifact beside it on the same GGUF in one run.
#   bash benchmarks/cpu.sh build [WORKDIR]             build WORKDIR/build/bin/llama-bench (default ~/.cache/ember/llamacpp)
#   bash benchmarks/cpu.sh bench ARTIFACT GGUF [WORKDIR] ember bench --peer llama.cpp on ARTIFACT vs GGUF
#   bash benchmarks/cpu.sh perplexity ARTIFACT GGUF TEXT [WORKDIR]
#                                                      ember eval --perplexity --scoring llama.cpp beside
#                                                      llama-perplexity on the same text and GGUF (CONTEXT=512)
# The build is reused when it exists. Threads: all physical cores (override with THREADS=N).
set -euo pipefail
cmd=${1:?usage: cpu.sh build [WORKDIR] | bench ARTIFACT GGUF [WORKDIR]}; shift
default_work=${XDG_CACHE_HOME:-$HOME/.cache}/ember/llamacpp

build() {  # build [WORKDIR [TOOL]]: prints the tool's path (default llama-bench)
  local work=${1:-$default_work} tool=${2:-llama-bench}
  mkdir -p "$work"; cd "$work"
  if [ -x "build/bin/$tool" ]; then echo "$work/build/bin/$tool"; return; fi
  if [ ! -f src/CMakeLists.txt ]; then
    ls llama_cpp_python-*.tar.gz >/dev/null 2>&1 || pip download -q --no-deps --no-binary :all: llama-cpp-python -d . >&2
    mkdir -p src
    tar xzf llama_cpp_python-*.tar.gz --strip-components=3 -C src --wildcards '*/vendor/llama.cpp/*'
  fi
  # The host's SIMD levels by name instead of GGML_NATIVE: -march=native also turns on AMX, which a VM can
  # advertise in cpuinfo without enabling it (llama-bench then dies on `ldtilecfg`).
  local isa=() flags; flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
  for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512vbmi:AVX512_VBMI \
              avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
    [[ " $flags " == *" ${pair%%:*} "* ]] && isa+=("-DGGML_${pair##*:}=ON")
  done
  cmake -S src -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF -DGGML_NATIVE=OFF "${isa[@]}" \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >build.log 2>&1
  cmake --build build --target "$tool" -j"$(nproc)" >>build.log 2>&1 || { tail -30 build.log >&2; exit 1; }
  echo "$work/build/bin/$tool"
}

case $cmd in
  build) build "${1:-}" ;;
  bench)
    artifact=${1:?ARTIFACT}; gguf=${2:?GGUF}; bin=$(build "${3:-}")
    if [ -n "${THREADS:-}" ]; then export TVM_NUM_THREADS=$THREADS; fi  # ember's pool; llama-bench gets the same -t
    ember bench "$artifact" --prefill 128,512 --steps 64 --peer llama.cpp --llama-bench "$bin" --gguf "$gguf" ;;
  perplexity)
    artifact=${1:?ARTIFACT}; gguf=${2:?GGUF}; text=${3:?TEXT}; bin=$(build "${4:-}" llama-perplexity)
    threads=${THREADS:-$(python3 -c 'import ember.runtime.threads as t; print(t.physical_cores())')}
    export TVM_NUM_THREADS=$threads
    ember eval "$artifact" --perplexity "$text" --context "${CONTEXT:-512}" --scoring llama.cpp --json
    "$bin" -m "$gguf" -f "$text" -c "${CONTEXT:-512}" -b "${CONTEXT:-512}" -t "$threads" 2>&1 | grep -E 'Final estimate|seconds per pass|tokenizes|error' ;;
  *) echo "cpu.sh: unknown command '$cmd' (build | bench | perplexity)" >&2; exit 2 ;;
esac
