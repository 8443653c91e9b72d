"""ember's rope and KV-append kernels for cuda (targets/cuda/kv_append.py, kernels/kv_append.cuh), no GPU needed:
which of the paged KV cache's PrimFuncs get swapped, the rope constants, numpy models of the kernels' index math
against plain references, and that the source compiles with nvcc without spills. Their numbers on a GPU:
tools/attention_bench.py (kv rows)."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

from cuda_lowered import through_cuda_pipeline
from test_cuda_attention import CONFIG, _extern_calls, _lowered, _prims

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA 13 toolkit)")


def test_cuda_pipeline_swaps_rope_and_append():
    from ember.targets.cuda import kv_append

    mod = through_cuda_pipeline(_lowered())
    prims = _prims(mod)
    assert _extern_calls(prims[kv_append.ROPE_NAME]) == ["ember::kv::rotary<64, 64, 4, 2, 0>"]
    assert _extern_calls(prims[kv_append.APPEND_NAME]) == ["ember::kv::append<64, 2, 16>"]
    assert not _extern_calls(prims["tir_kv_cache_transpose_append_mla"])
    # launch shape: 1-D grid of 128 threads, one thread per 8-element chunk of every (token, head)
    script = prims[kv_append.ROPE_NAME].script()
    assert "T.thread_binding(128, thread=\"threadIdx.x\")" in script and "seq_len * 64 + 127) // 128" in script
    assert "ntoken * T.int64(16) + T.int64(127)) // T.int64(128)" in prims[kv_append.APPEND_NAME].script()


def test_swap_is_idempotent_and_can_be_turned_off(monkeypatch):
    from ember.targets.cuda import kv_append

    once = kv_append.replace_kv_kernels(_lowered())
    twice = kv_append.replace_kv_kernels(once)
    for name in (kv_append.ROPE_NAME, kv_append.APPEND_NAME):
        assert _extern_calls(_prims(twice)[name]) == _extern_calls(_prims(once)[name]) != []
    monkeypatch.setenv(kv_append.ENV, "0")
    off = kv_append.replace_kv_kernels(_lowered())
    assert not _extern_calls(_prims(off)[kv_append.ROPE_NAME])
    assert not _extern_calls(_prims(off)[kv_append.APPEND_NAME])


def test_llama3_scaling_reaches_the_kernel():
    from ember.targets.cuda import kv_append
    from ember.targets.lower import ROPE_ATTR

    prims = _prims(_lowered(rope_scaling=LLAMA3, rope_theta=500000.0))
    info = json.loads(str(prims[kv_append.ROPE_NAME].attrs[ROPE_ATTR]))
    assert info["theta"] == 500000.0 and info["scaling"]["rope_type"] == "llama3"
    new = _prims(kv_append.replace_kv_kernels(_lowered(rope_scaling=LLAMA3, rope_theta=500000.0)))
    assert _extern_calls(new[kv_append.ROPE_NAME]) == ["ember::kv::rotary<64, 64, 4, 2, 1>"]
    variant, theta, scale, inv_factor, alpha, beta = kv_append.rope_constants(info)
    assert (variant, theta, scale, inv_factor) == (1, 500000.0, 1.0, 0.125)
    assert alpha == pytest.approx(64 / (2 * math.pi) / 3) and beta == pytest.approx(1 / 3)


def test_signature_refuses_what_the_kernel_does_not_cover():
    from tvm.relax.frontend.nn.llm.position_embedding import llama_rope_with_position_map

    from ember.targets.cuda import kv_append
    from ember.targets.lower import ROPE_ATTR

    plain = llama_rope_with_position_map(1e4, 1, 128, 32, 8, "float16", {})
    assert kv_append.rope_signature(plain) is None  # no ember.rope attribute: not built by ember's lower
    tagged = plain.with_attr(ROPE_ATTR, json.dumps({"theta": 1e4, "rotary_dim": 128, "scaling": {}}))
    assert kv_append.rope_signature(tagged)[:4] == (32, 8, 128, "float16")
    gptj = plain.with_attr(ROPE_ATTR, json.dumps({"theta": 1e4, "rotary_dim": 128, "scaling": {"rope_type": "gptj"}}))
    assert kv_append.rope_signature(gptj) is None
    partial = plain.with_attr(ROPE_ATTR, json.dumps({"theta": 1e4, "rotary_dim": 40, "scaling": {}}))
    assert kv_append.rope_signature(partial) is None  # halves of 20: a chunk of 8 would straddle them
    f32 = llama_rope_with_position_map(1e4, 1, 128, 32, 8, "float32", {}).with_attr(ROPE_ATTR, tagged.attrs[ROPE_ATTR])
    assert kv_append.rope_signature(f32) is None
    prims = _prims(_lowered())
    assert kv_append.append_signature(prims["tir_kv_cache_transpose_append_mla"]) is None
    assert kv_append.append_signature(prims["tir_kv_cache_transpose_append"]) == (2, 64, 16, "float16")


# -- numpy models of the kernels' thread decomposition -----------------------------------------------------------
def _kernel_rotary(qkv, pos, h_q, h_kv, rd, consts):
    """kv_append.cuh `rotary`, one (token, head, chunk) at a time, in float32 with fp16 cos/sin."""
    variant, theta, scale, inv_factor, alpha, beta = (np.float32(c) for c in consts)
    s_len, heads, d = qkv.shape
    q = np.empty((s_len, h_q, d), np.float16)
    k = np.empty((s_len, h_kv, d), np.float16)
    v = np.empty((s_len, h_kv, d), np.float16)
    half = rd // 2
    for i in range(s_len * heads * (d // 8)):
        c, h, s = i % (d // 8), (i // (d // 8)) % heads, i // (d // 8 * heads)
        dst = q[s, h] if h < h_q else k[s, h - h_q] if h < h_q + h_kv else v[s, h - h_q - h_kv]
        own = qkv[s, h, c * 8:c * 8 + 8]
        if h >= h_q + h_kv or c * 8 >= rd:
            dst[c * 8:c * 8 + 8] = own
            continue
        low = c * 8 < half
        other = qkv[s, h, c * 8 + (half if low else -half):][:8]
        p = np.float32(pos[s]) * scale
        dd = np.arange(c * 8, c * 8 + 8)
        e = (dd * 2 % rd).astype(np.float32) / np.float32(rd)
        if variant == 1:
            orig = np.float32(1) / np.power(theta, e)
            smooth = np.clip(alpha * orig - beta, 0, 1)
            angle = p * ((1 - smooth) * orig * inv_factor + smooth * orig)
        else:
            angle = p / np.power(theta, e)
        cs = np.cos(angle).astype(np.float16).astype(np.float32)
        sn = np.sin(angle).astype(np.float16).astype(np.float32)
        partner = -other.astype(np.float32) if low else other.astype(np.float32)
        dst[c * 8:c * 8 + 8] = (cs * own.astype(np.float32) + sn * partner).astype(np.float16)
    return q, k, v


@pytest.mark.parametrize("scaling,rd", [({}, 64), (LLAMA3, 64), ({}, 32)])
def test_rotary_index_math_matches_hf_style_rope(scaling, rd):
    """The kernel's chunk decomposition and TVM's frequency formula (llama3: alpha / beta form) against a plain
    rotate-half rope with ember's Hugging Face inverse frequencies (targets/rope.py)."""
    from ember.targets.cuda import kv_append
    from ember.targets.rope import inverse_frequencies

    h_q, h_kv, d, theta = 4, 2, 64, 500000.0
    rng = np.random.default_rng(0)
    pos = np.array([0, 1, 15, 16, 17, 130, 2047], np.int32)
    qkv = rng.standard_normal((len(pos), h_q + 2 * h_kv, d)).astype(np.float16)
    consts = kv_append.rope_constants({"theta": theta, "scaling": scaling})
    q, k, v = _kernel_rotary(qkv, pos, h_q, h_kv, rd, consts)

    inv = inverse_frequencies(theta, rd, scaling or None).astype(np.float64)
    angle = pos[:, None].astype(np.float64) * inv[None, :]  # [S, rd / 2]
    cos, sin = np.cos(np.concatenate([angle, angle], 1)), np.sin(np.concatenate([angle, angle], 1))
    x = qkv.astype(np.float64)
    rot = x[..., :rd]
    rotated = rot * cos[:, None] + np.concatenate([-rot[..., rd // 2:], rot[..., :rd // 2]], -1) * sin[:, None]
    ref = np.concatenate([rotated, x[..., rd:]], -1)
    np.testing.assert_allclose(q, ref[:, :h_q], atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(k, ref[:, h_q:h_q + h_kv], atol=2e-2, rtol=2e-2)
    np.testing.assert_array_equal(v, qkv[:, h_q + h_kv:])
    assert np.abs(q.astype(np.float64) - x[:, :h_q]).max() > 0.1  # the rotation did something


def test_append_offsets_cross_page_boundaries():
    """The kernel's flat offsets ((page * 2 * HKV + h) * PAGE + row) * D (+ HKV * PAGE * D for V) write exactly
    where TVM's transpose_append writes pages[slot // PAGE, 0 / 1, h, slot % PAGE]; slot -1 is skipped."""
    h_kv, d, page = 2, 64, 16
    rng = np.random.default_rng(1)
    slots = np.array([14, 15, 16, 17, -1, 3 * page + 5, 31], np.int32)  # crosses pages 0 -> 1, then page 3
    k = rng.standard_normal((len(slots), h_kv, d)).astype(np.float16)
    v = rng.standard_normal((len(slots), h_kv, d)).astype(np.float16)
    pages = np.zeros((5, 2, h_kv, page, d), np.float16)
    flat = pages.reshape(-1).copy()
    chunks = d // 8
    for i in range(len(slots) * h_kv * chunks):
        c, h, s = i % chunks, (i // chunks) % h_kv, i // (chunks * h_kv)
        if slots[s] == -1:
            continue
        base = ((slots[s] // page * 2 * h_kv + h) * page + slots[s] % page) * d + c * 8
        flat[base:base + 8] = k[s, h, c * 8:c * 8 + 8]
        flat[base + h_kv * page * d:base + h_kv * page * d + 8] = v[s, h, c * 8:c * 8 + 8]
    for s, slot in enumerate(slots):
        if slot != -1:
            pages[slot // page, 0, :, slot % page] = k[s]
            pages[slot // page, 1, :, slot % page] = v[s]
    np.testing.assert_array_equal(flat.reshape(pages.shape), pages)


HARNESS = textwrap.dedent("""
    #include "kv_append.cuh"
    template <int D, int RD, int HQ, int HKV, int V, typename T>
    __global__ void __launch_bounds__(128) rot(const T* x, const int* p, T* q, T* k, T* v, int n, long long a,
                                               float t, float s, float f, float al, float b) {
      ember::kv::rotary<D, RD, HQ, HKV, V>(x, p, q, k, v, n, a, t, s, f, al, b);
    }
    template <int D, int HKV, int P, typename T>
    __global__ void __launch_bounds__(128) app(T* pages, const T* k, const T* v, const int* p, long long n) {
      ember::kv::append<D, HKV, P>(pages, k, v, p, n);
    }
    template __global__ void rot<128, 128, 32, 8, 1, __half>(const __half*, const int*, __half*, __half*, __half*,
        int, long long, float, float, float, float, float);
    template __global__ void rot<64, 64, 9, 3, 0, __nv_bfloat16>(const __nv_bfloat16*, const int*, __nv_bfloat16*,
        __nv_bfloat16*, __nv_bfloat16*, int, long long, float, float, float, float, float);
    template __global__ void rot<128, 64, 8, 8, 0, __half>(const __half*, const int*, __half*, __half*, __half*,
        int, long long, float, float, float, float, float);
    template __global__ void app<128, 8, 16, __half>(__half*, const __half*, const __half*, const int*, long long);
    template __global__ void app<64, 3, 16, __nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*,
        const __nv_bfloat16*, const int*, long long);
""")


@needs_nvcc
def test_kernel_source_compiles_with_nvcc(tmp_path):
    from ember.targets.cuda.device_code import KERNEL_DIR, with_device_sources

    (tmp_path / "k.cu").write_text(HARNESS)
    proc = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-O3", "-Xptxas", "-v", "-I", str(KERNEL_DIR),
                           "-c", "k.cu", "-o", "k.o"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spills = [line for line in proc.stderr.splitlines() if "spill" in line and not re.search(r"\b0 bytes spill", line)]
    assert not spills, spills
    # what nvcc gets from a build: pdl.cuh inlined (no include path), griddepcontrol in the PTX
    code = with_device_sources("// ember::kv::append<64, 2, 16>\n")
    assert '#include "pdl.cuh"' not in code and "namespace pdl" in code
    (tmp_path / "one.cu").write_text(code + HARNESS.split('#include "kv_append.cuh"', 1)[1])
    proc = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-O3", "-ptx", "one.cu", "-o", "one.ptx"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ptx = (tmp_path / "one.ptx").read_text()
    assert ptx.count("griddepcontrol.wait") >= 5 and ptx.count("griddepcontrol.launch_dependents") >= 5


def test_pdl_contract_in_the_source():
    """Every kernel of kv_append.cuh and decode_attention.cuh calls launch_dependents() and wait(), and wait()
    comes before the first load of a pointer argument."""
    from ember.targets.cuda.device_code import KERNEL_DIR

    for name, funcs in (("kv_append.cuh", ("rotary", "append")), ("decode_attention.cuh", ("split", "merge"))):
        text = (KERNEL_DIR / name).read_text()
        for func in funcs:
            body = text[re.search(rf"void {func}\(", text).end():]
            body = body[:body.find("\n}\n")]
            wait = body.find("pdl::wait()")
            assert 0 < body.find("pdl::launch_dependents()") < wait, (name, func)
            first_load = min(i for i in (body.find("reinterpret_cast<const uint4*>"), body.find("indptr[b]"),
                                         body.find("position_map[s]"), body.find("ml[2 * c]")) if i >= 0)
            assert wait < first_load, (name, func)


assert CONFIG["num_attention_heads"] == 4  # the shapes asserted above
