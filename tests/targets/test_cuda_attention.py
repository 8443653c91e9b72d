"""ember's split-K decode attention for cuda (targets/cuda/attention.py, kernels/decode_attention.cuh), no GPU
needed: the swap of TVM's `batch_decode_paged_kv` in cuda builds, what the signature check refuses, and that the
kernel source compiles with nvcc. Its numbers are checked on a GPU by tools/attention_bench.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from ember.frontend.config import ModelConfig
from ember.frontend.models import build_module
from ember.passes.manager import PassManager, default_pipeline

from cuda_lowered import through_cuda_pipeline

# head dim 64, GQA group 2
CONFIG = {"model_type": "llama", "vocab_size": 320, "hidden_size": 256, "intermediate_size": 512,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 256, "tie_word_embeddings": False}
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA 13 toolkit)")


def _extern_calls(func) -> list[str]:
    return re.findall(r'T\.call_extern\("[a-z0-9]+", "([^"]+)"', func.script())


def _lowered(**overrides):
    from ember.targets.cuda import CudaTarget
    from ember.targets.lower import lower

    module = PassManager(default_pipeline("q0f16")).run(
        build_module(ModelConfig.from_dict({**CONFIG, **overrides}), "tiny", dtype="float16", static_decode=True))
    relax_mod, _ = lower(module, CudaTarget.parse("cuda:sm_90"))
    return relax_mod


def _prims(mod) -> dict:
    import tvm

    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def _tvm_kernel(h_q: int, h_kv: int, d: int, dtype: str = "float16", sliding: bool = False):
    from tvm.relax.frontend.nn.llm._decode_kernels import _attention_decode

    from ember.targets.cuda.pipeline import cuda_target

    return _attention_decode(h_kv, h_q, d, dtype, sliding, {}, cuda_target(["sm_90"]))


def test_cuda_pipeline_swaps_the_decode_kernel():
    """The cuda relax pipeline leaves batch_decode_paged_kv calling ember's split and merge kernels, TVM's kernel
    kept (for rotary_mode == 1) under DECODE_INLINE_ROPE, the sliding-window kernel TVM's."""
    from ember.targets.cuda import attention

    mod = through_cuda_pipeline(_lowered())
    prims = _prims(mod)
    calls = _extern_calls(prims[attention.NAME])
    assert calls == ["ember::attn::split<64, 2, 2, 16, 4, 4>", "ember::attn::merge<64>"]
    assert "T.call_cpacked(\"batch_decode_paged_kv_inline_rope\"" in prims[attention.NAME].script()
    kept = prims[attention.DECODE_INLINE_ROPE]
    assert not _extern_calls(kept) and kept.attrs["global_symbol"] == attention.DECODE_INLINE_ROPE
    assert not _extern_calls(prims["batch_decode_paged_kv_sliding_window"])


def test_swap_is_idempotent_and_can_be_turned_off(monkeypatch):
    from ember.targets.cuda import attention

    mod = _lowered()
    once = attention.replace_decode_attention(mod)
    twice = attention.replace_decode_attention(once)
    assert _extern_calls(_prims(twice)[attention.NAME]) == _extern_calls(_prims(once)[attention.NAME])
    monkeypatch.setenv(attention.ENV, "0")
    off = attention.replace_decode_attention(_lowered())
    assert not _extern_calls(_prims(off)[attention.NAME]) and attention.DECODE_INLINE_ROPE not in _prims(off)


def test_unsupported_head_dim_keeps_tvm_kernel():
    from ember.targets.cuda import attention

    mod = attention.replace_decode_attention(_lowered(hidden_size=128))  # head dim 32
    assert not _extern_calls(_prims(mod)[attention.NAME]) and attention.DECODE_INLINE_ROPE not in _prims(mod)


@pytest.mark.parametrize("h_q,h_kv,d,dtype,expected", [
    (32, 8, 128, "float16", (32, 8, 128, 16, "float16")),    # llama3-8b
    (9, 3, 64, "float16", (9, 3, 64, 16, "float16")),        # SmolLM2-135M
    (8, 8, 64, "bfloat16", (8, 8, 64, 16, "bfloat16")),      # MHA, bf16
    (16, 2, 128, "float16", (16, 2, 128, 16, "float16")),    # group 8
    (32, 2, 128, "float16", None),                           # group 16: more q heads a block than the kernel holds
    (8, 2, 96, "float16", None),                             # head dim 96
    (8, 2, 256, "float16", (8, 2, 256, 16, "float16")),      # Gemma's head dim
    (8, 2, 512, "float16", None),
    (8, 2, 64, "float32", None),
])
def test_signature_takes_exactly_the_supported_kernels(h_q, h_kv, d, dtype, expected):
    from ember.targets.cuda import attention

    assert attention._decode_signature(_tvm_kernel(h_q, h_kv, d, dtype)) == expected


def test_signature_refuses_sliding_window_and_other_kernels():
    from ember.targets.cuda import attention
    from ember.targets.cpu.attention import decode_paged as cpu_decode

    assert attention._decode_signature(_tvm_kernel(32, 8, 128, sliding=True)) is None  # length_info [3, B]
    assert attention._decode_signature(cpu_decode(4, 2, 64, 16)) is None  # float32
    prims = _prims(_lowered())
    assert attention._decode_signature(prims["batch_tree_attn"]) is None
    assert attention._decode_signature(prims["tir_attention_merge_state"]) is None


HARNESS = textwrap.dedent("""
    #include "decode_attention.cuh"
    template <int D, int HKV, int G, typename T, bool CAP>
    __global__ void __launch_bounds__(128) split_k(const T* q, const T* p, const int* a, const int* b, const int* c,
                                                   T* o, float* l, float* wo, float* wm, int n, float s, int f,
                                                   int w, int bs, float cap) {
      ember::attn::split<D, HKV, G, 16, 4, (G <= 4 ? 4 : 2), T, CAP>(q, p, a, b, c, o, l, wo, wm, n, s, f, w, bs,
                                                                    cap);
    }
    template <int D, typename T>
    __global__ void merge_k(const float* wo, const float* wm, T* o, float* l, int n) {
      ember::attn::merge<D>(wo, wm, o, l, n);
    }
    #define SPLIT(D, HKV, G, T, CAP) template __global__ void split_k<D, HKV, G, T, CAP>(const T*, const T*, \\
        const int*, const int*, const int*, T*, float*, float*, float*, int, float, int, int, int, float);
    SPLIT(128, 8, 4, __half, false)
    SPLIT(64, 3, 3, __half, false)
    SPLIT(64, 1, 8, __nv_bfloat16, false)
    SPLIT(128, 8, 1, __half, false)
    SPLIT(256, 4, 2, __half, true)           // Gemma 2: head dim 256, soft-capped
    SPLIT(256, 1, 4, __nv_bfloat16, false)   // Gemma 3
    template __global__ void merge_k<128, __half>(const float*, const float*, __half*, float*, int);
    template __global__ void merge_k<64, __nv_bfloat16>(const float*, const float*, __nv_bfloat16*, float*, int);
    template __global__ void merge_k<256, __half>(const float*, const float*, __half*, float*, int);
""")


@needs_nvcc
def test_kernel_source_compiles_with_nvcc(tmp_path):
    """The .cuh on its own, instantiated for the llama3-8b, SmolLM2, group-8 bf16, MHA and Gemma (head dim 256,
    soft-capped) shapes: no errors, no register spills (ptxas -v)."""
    from ember.targets.cuda.device_code import KERNEL_DIR

    (tmp_path / "k.cu").write_text(HARNESS)
    proc = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-O3", "-Xptxas", "-v", "-I", str(KERNEL_DIR),
                           "-c", "k.cu", "-o", "k.o"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spills = [line for line in proc.stderr.splitlines() if "spill" in line and not re.search(r"\b0 bytes spill", line)]
    assert not spills, spills


BUILD = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None
    from ember.targets.cuda.stub_driver import prepare_cuda_compile_process
    prepare_cuda_compile_process()
    import ember.targets.cuda.nvcc as nvcc
    from ember.compiler import CompileRequest, compile_model
    sources = []
    compile_fatbin = nvcc.compile_fatbin
    def spy(code, archs, stats=None):
        sources.append(code)
        return compile_fatbin(code, archs, stats)
    nvcc.compile_fatbin = spy
    compile_model(CompileRequest(model=sys.argv[1], target="cuda:sm_90", quant="q4f16", output=sys.argv[2]))
    code = "\\n".join(sources)
    print(json.dumps({"defines": "namespace attn" in code,
                      "calls": sorted({l.strip().split("(")[0] for l in code.splitlines()
                                       if l.strip().startswith("ember::attn::")}),
                      "kept": "batch_decode_paged_kv_inline_rope_kernel(" in code}))
""")


@needs_nvcc
def test_nvcc_source_holds_the_attention_kernel(tmp_path):
    """A q4f16 compile of a tiny llama (head dim 64, group 2) for sm_90: the source nvcc gets defines the kernel,
    the decode kernel calls it, and TVM's kernel is still there for inline rope."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "quant"))
    from model_fixtures import random_llama

    random_llama(seed=3, hidden_size=256, intermediate_size=320, num_attention_heads=4,
                 num_key_value_heads=2).save_pretrained(tmp_path / "hf")
    (tmp_path / "build.py").write_text(BUILD)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH", "TVM_CUDA_COMPILE_MODE")}
    proc = subprocess.run([sys.executable, str(tmp_path / "build.py"), str(tmp_path / "hf"), str(tmp_path / "art")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"defines": True, "calls": ["ember::attn::merge<64>", "ember::attn::split<64, 2, 2, 16, 4, 4>"],
                    "kept": True}
