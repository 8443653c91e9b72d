"""ember's tensor-core prefill attention for cuda (targets/cuda/prefill_attention.py, kernels/prefill_attention.cuh),
no GPU needed: the swap of TVM's `batch_prefill_ragged_kv` in cuda builds (test_cuda_attention.py's tiny model),
what it leaves to TVM, and that the kernel compiles without spills. Its numbers are checked on a GPU against torch
(tools/prefill_attention_check.py) and inside whole models against the cpu build (`ember verify`, gemv_parity)."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from cuda_lowered import through_cuda_pipeline
from ember.passes.manager import PassManager, default_pipeline
from test_cuda_attention import _extern_calls as _calls
from test_cuda_attention import _lowered, _prims


def test_cuda_pipeline_swaps_the_ragged_prefill_kernel():
    from ember.targets.cuda import prefill_attention

    mod = through_cuda_pipeline(_lowered())
    prims = _prims(mod)
    assert _calls(prims[prefill_attention.NAME]) == ["ember::prefill::ragged<64, 2, 2, __half>"]
    assert 'T.call_cpacked("batch_prefill_ragged_kv_inline_rope"' in prims[prefill_attention.NAME].script()
    kept = prims[prefill_attention.INLINE_ROPE]
    assert not _calls(kept) and kept.attrs["global_symbol"] == prefill_attention.INLINE_ROPE


def test_cuda_pipeline_swaps_the_paged_prefill_kernel_but_not_the_sliding_window_one():
    from ember.targets.cuda import prefill_attention as pa

    prims = _prims(through_cuda_pipeline(_lowered()))
    assert _calls(prims[pa.PAGED]) == ["ember::prefill::paged<64, 2, 2, 16, __half>"]
    assert 'T.call_cpacked("batch_prefill_paged_kv_inline_rope"' in prims[pa.PAGED].script()
    assert not _calls(prims[pa.PAGED_INLINE_ROPE])
    assert not _calls(prims[pa.PAGED + "_sliding_window"])  # TVM's: windowed page walks are not ember's yet


def test_swap_is_idempotent_can_be_turned_off_and_leaves_other_head_dims(monkeypatch):
    from ember.targets.cuda import prefill_attention as pa

    once = pa.replace_prefill_attention(_lowered())
    twice = pa.replace_prefill_attention(once)
    assert _calls(_prims(twice)[pa.NAME]) == _calls(_prims(once)[pa.NAME]) != []
    other = pa.replace_prefill_attention(_lowered(hidden_size=128))  # head dim 32
    assert not _calls(_prims(other)[pa.NAME]) and pa.INLINE_ROPE not in _prims(other)
    monkeypatch.setenv(pa.ENV, "0")
    off = pa.replace_prefill_attention(_lowered())
    assert not _calls(_prims(off)[pa.NAME]) and pa.INLINE_ROPE not in _prims(off)


def test_a_sliding_window_reaches_every_attention_kernel_as_a_mask():
    """A model with a window: lower() records it, and the ragged, paged and decode kernels get it as a constant (the
    cache then keeps every token: targets/attention_window.py); switched-off kernels would ignore it, so then
    the window stays TVM's (no attribute) and a module that has one anyway fails to build."""
    from ember.targets.attention_window import WINDOW_ATTR
    from ember.targets.cuda import attention
    from ember.targets.cuda import prefill_attention as pa
    from ember.targets.lower import LoweringError

    lowered = _lowered(model_type="mistral", sliding_window=48)
    assert int(lowered.attrs[WINDOW_ATTR]) == 48
    prims = _prims(through_cuda_pipeline(lowered))
    for name, kernel in ((pa.NAME, "ember::prefill::ragged<"), (pa.PAGED, "ember::prefill::paged<"),
                         (attention.NAME, "ember::attn::split<")):
        call = re.search(r'T\.call_extern\("int32", "' + re.escape(kernel) + r'[^"]*",(.*)\)', prims[name].script())
        # the window, then by_sign (0: every layer) and the soft-cap (none)
        assert call is not None and re.search(r", 48, 0, T\.float32\(0(\.0)?\)\s*$", call.group(1)), (name, call)
    assert WINDOW_ATTR not in (_lowered().attrs or {})
    with pytest.MonkeyPatch.context() as env:
        env.setenv(pa.ENV, "0")
        assert WINDOW_ATTR not in (_lowered(model_type="mistral", sliding_window=48).attrs or {})
        with pytest.raises((LoweringError, RuntimeError), match="sliding window needs ember's attention kernels"):
            pa.replace_prefill_attention(lowered)  # (a module pass: TVM's FFI re-raises as RuntimeError)


def test_gemma_windows_by_sign_and_soft_capping_reach_every_attention_kernel():
    """Gemma 2's attention (head dim 256, a window on every other layer, scores soft-capped): lower() records the
    window, the by-sign rule and the cap; the ragged, paged and decode kernels are ember's capped instantiations
    and get (window, by_sign = 1, cap); the golden reference's cpu kernels take the same (16-bit decode)."""
    from ember.frontend.models import build_module
    from ember.frontend.presets import preset_config
    from ember.targets.attention_window import SOFTCAP_ATTR, WINDOW_ATTR, WINDOW_BY_SIGN_ATTR
    from ember.targets.cuda import CudaTarget, attention
    from ember.targets.cuda import prefill_attention as pa
    from ember.targets.lower import lower
    import dataclasses

    config = dataclasses.replace(preset_config("gemma2-2b"), num_hidden_layers=2, vocab_size=512)
    module = PassManager(default_pipeline("q0f16")).run(build_module(config, "g2", dtype="float16",
                                                                      static_decode=True))
    lowered, _ = lower(module, CudaTarget.parse("cuda:sm_90"))
    assert int(lowered.attrs[WINDOW_ATTR]) == 4096 and int(lowered.attrs[WINDOW_BY_SIGN_ATTR]) == 1
    assert float(lowered.attrs[SOFTCAP_ATTR]) == 50.0
    prims = _prims(through_cuda_pipeline(lowered))
    for name, kernel in ((pa.NAME, "ember::prefill::ragged<256, 4, 2, __half, true>"),
                         (pa.PAGED, "ember::prefill::paged<256, 4, 2, 16, __half, true>"),
                         (attention.NAME, "ember::attn::split<256, 4, 2, 16, 4, 4, __half, true>")):
        call = re.search(r'T\.call_extern\("int32", "' + re.escape(kernel) + r'",(.*)\)', prims[name].script())
        assert call is not None and re.search(r", 4096, 1, T\.float32\(50(\.0)?\)\s*$", call.group(1)), (name, call)


def test_kernel_names():
    from ember.targets.cuda.prefill_attention import kernel_name

    assert kernel_name(32, 8, 128, "float16") == "ember::prefill::ragged<128, 8, 4, __half>"
    assert kernel_name(9, 3, 64, "bfloat16") == "ember::prefill::ragged<64, 3, 3, __nv_bfloat16>"
    from ember.targets.cuda.prefill_attention import paged_kernel_name

    assert paged_kernel_name(32, 8, 128, 16, "float16") == "ember::prefill::paged<128, 8, 4, 16, __half>"
    assert kernel_name(8, 4, 256, "float16", capped=True) == "ember::prefill::ragged<256, 4, 2, __half, true>"


HARNESS = """
#include "prefill_attention.cuh"
#define K(NAME, D, HKV, G, T, CAP) extern "C" __global__ void __launch_bounds__(128) NAME(const T* q, \\
    const int* qi, const T* k, const T* v, const int* ki, T* o, float* lse, int b, int c, float s, int w, int bs, \\
    float cap) { \\
  ember::prefill::ragged<D, HKV, G, T, CAP>(q, qi, k, v, ki, o, lse, b, c, s, w, bs, cap); }
K(llama3, 128, 8, 4, __half, false)
K(smollm2, 64, 3, 3, __half, false)
K(bf16_mha, 64, 8, 1, __nv_bfloat16, false)
K(group8, 128, 2, 8, __half, false)
K(gemma2, 256, 4, 2, __half, true)
K(gemma3, 256, 1, 4, __nv_bfloat16, false)
#define P(NAME, D, HKV, G, T, CAP) extern "C" __global__ void __launch_bounds__(128) NAME(const T* q, \\
    const int* qi, const T* pages, const int* pi, const int* pv, const int* last, T* o, float* lse, int b, int c, \\
    float s, int w, int bs, float cap) { \\
  ember::prefill::paged<D, HKV, G, 16, T, CAP>(q, qi, pages, pi, pv, last, o, lse, b, c, s, w, bs, cap); }
P(llama3_paged, 128, 8, 4, __half, false)
P(bf16_paged, 64, 8, 1, __nv_bfloat16, false)
P(gemma2_paged, 256, 4, 2, __half, true)
P(gemma3_paged, 256, 1, 4, __nv_bfloat16, false)
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA 13 toolkit)")
def test_kernel_source_compiles_without_spills(tmp_path):
    from ember.targets.cuda.device_code import KERNEL_DIR

    (tmp_path / "k.cu").write_text(HARNESS)
    proc = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-O3", "-Xptxas", "-v", "-I", str(KERNEL_DIR),
                           "-c", "k.cu", "-o", "k.o"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spills = [line for line in proc.stderr.splitlines() if "spill" in line and not re.search(r"\b0 bytes spill", line)]
    assert not spills, spills
