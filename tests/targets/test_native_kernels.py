"""ember's native cpu kernels (targets/cpu/native/*.c) called directly through ctypes, built for every x86-64 level
this host runs (v4: AVX-512, v3: AVX2, generic: SSE2), against references nobody here wrote: gguf's quantizers and
dequantizers for the GGUF block formats, numpy for half-precision weights and for attention over a paged cache.
A fake thread pool (TVM's launch slot filled from Python) runs the kernels as 3 uneven tasks, so the row split is
checked too. Model-level parity through TVM is in tests/quant/test_e2e_quant.py and tests/e2e."""
from __future__ import annotations

import ctypes
import subprocess

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from ember.passes.quant_schemes import SCHEMES, dequantize, from_ggml_blocks, quantize
from ember.targets.cpu.build import _host_x86_level
from ember.targets.cpu import native
from ember.passes.quant_kblocks import BLOCK_BYTES
from ember.passes.quant_schemes import GGML_TO_SCHEME
from ember.targets.cpu.native_linear import BF16, F16, Q4, Q4_1, Q8, WIDE, quant_format_code

LEVELS = {"x86-64-v4": ["x86-64-v4", "x86-64-v3", "generic"], "x86-64-v3": ["x86-64-v3", "generic"]}.get(
    _host_x86_level() or "", ["generic"])
P = ctypes.c_void_p


class _Env(ctypes.Structure):
    _fields_ = [("sync_handle", P), ("num_task", ctypes.c_int32)]


LAMBDA = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Env), P)
LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int, LAMBDA, P, ctypes.c_int)


@pytest.fixture(scope="module", params=LEVELS)
def lib(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("native") / f"native-{request.param}.so"
    sources = [str(native.SOURCE_DIR / s) for s in native.SOURCES]
    subprocess.run([native.compiler(), *native.flags(request.param), "-shared", "-I", str(native.SOURCE_DIR),
                    *sources, "-o", str(out), "-lm"], check=True)
    handle = ctypes.CDLL(str(out))
    handle.ember_linear.restype = ctypes.c_int32
    handle.ember_linear.argtypes = [P] * 6 + [ctypes.c_int64] * 3 + [ctypes.c_int32] * 3
    handle.ember_linear_k.restype = ctypes.c_int32
    handle.ember_linear_k.argtypes = [P] * 9 + [ctypes.c_int64] * 3 + [ctypes.c_int32] * 2
    handle.ember_decode_attention.restype = ctypes.c_int32
    handle.ember_decode_attention.argtypes = ([P] * 7 + [ctypes.c_int64] + [ctypes.c_int32] * 4
                                              + [ctypes.c_float, ctypes.c_int32, ctypes.c_float])
    handle.ember_moe.restype = ctypes.c_int32
    weight = [P] * 6 + [ctypes.c_int64] * 6 + [ctypes.c_int32] * 2  # pieces, strides per expert, format, group
    handle.ember_moe.argtypes = [P] * 2 + weight * 3 + [P] + [ctypes.c_int64] * 4 + [ctypes.c_int32] * 2
    handle.ember_rope_split.restype = ctypes.c_int32
    handle.ember_rope_split.argtypes = ([P] * 5 + [ctypes.c_int64] + [ctypes.c_int32] * 4 + [ctypes.c_int64]
                                        + [ctypes.c_float] * 6)
    return handle


@pytest.fixture(params=[1, 3], ids=["1-task", "3-tasks"])
def pool(request, lib):
    """TVM's launch slot: unset (one task) or a serial pool of 3 tasks."""
    slot = P.in_dll(lib, "__TVMBackendParallelLaunch")
    keep = None
    if request.param > 1:
        def launch(fn, cdata, _num):
            env = _Env(None, request.param)
            return max(fn(task, ctypes.byref(env), cdata) for task in range(request.param))

        keep = LAUNCH(launch)
        slot.value = ctypes.cast(keep, P).value
    yield lib
    slot.value = None
    del keep


def _ptr(a: np.ndarray | None):
    return None if a is None else a.ctypes.data_as(P)


def _linear(lib, x, pieces, bias, rows, cols, group, code) -> np.ndarray:
    w, s, m = (list(pieces) + [None, None])[:3]
    y = np.full((x.shape[0], rows), np.nan, np.float32)
    rc = lib.ember_linear(_ptr(x), _ptr(w), _ptr(s), _ptr(m), _ptr(bias), _ptr(y), x.shape[0], rows, cols,
                          group, code, int(bias is not None))
    assert rc == 0
    return y


def _weights(rows, cols, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (rows, cols)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block
    return w


GGUF_CASES = {Q.Q4_0: Q4, Q.Q4_1: Q4_1, Q.Q8_0: Q8}


@pytest.mark.parametrize("qtype", list(GGUF_CASES), ids=lambda q: q.name)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 7])  # GEMV up to 3 rows of x, GEMM (4x4 tiles + remainders) above
@pytest.mark.parametrize("rows,cols", [(5, 64), (67, 576)])
def test_gguf_blocks_match_gguf_dequantize(pool, qtype, m, rows, cols):
    w = _weights(rows, cols, seed=rows + m)
    blocks = gguf.quants.quantize(w, qtype)
    reference_w = gguf.quants.dequantize(blocks, qtype).astype(np.float64)
    packed = from_ggml_blocks(blocks, qtype.name, cols)
    rng = np.random.default_rng(m)
    x = rng.normal(size=(m, cols)).astype(np.float32)
    bias = rng.normal(size=rows).astype(np.float32) if m % 2 else None
    y = _linear(pool, x, packed.pieces(), bias, rows, cols, 32, GGUF_CASES[qtype])
    expected = x.astype(np.float64) @ reference_w.T + (0 if bias is None else bias)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _kblocks(ggml_type: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random GGUF blocks of `ggml_type` (any byte pattern) with small finite fp16 scales."""
    rng = np.random.default_rng(seed)
    size, values = BLOCK_BYTES[ggml_type]
    raw = rng.integers(0, 256, (rows, cols // values, size), dtype=np.uint8)
    halves = {"Q5_0": (0,), "Q5_1": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2),
              "Q6_K": (208,)}
    for offset in halves[ggml_type]:
        halves = (rng.standard_normal(raw.shape[:2]) * 1e-3).astype(np.float16)
        raw[..., offset:offset + 2] = halves.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("ggml_type", list(BLOCK_BYTES))
@pytest.mark.parametrize("m", [1, 3, 4, 13])  # GEMV (<= 3 rows of x), GEMM tiles and remainders
@pytest.mark.parametrize("rows,cols", [(5, 256), (37, 768)])
def test_kept_native_blocks_match_gguf_dequantize(pool, ggml_type, m, rows, cols):
    """Q5_0 / Q5_1 / Q2_K .. Q6_K through ember_linear_k against x @ gguf's dequantized weights (float64)."""
    raw = _kblocks(ggml_type, rows, cols, seed=rows + m)
    reference_w = gguf.quants.dequantize(raw, Q[ggml_type]).astype(np.float64)
    fmt = SCHEMES[GGML_TO_SCHEME[ggml_type]].format
    packed = from_ggml_blocks(raw, ggml_type, cols)
    named = dict(zip(fmt.piece_names, packed.pieces()))
    rng = np.random.default_rng(m)
    x = rng.normal(size=(m, cols)).astype(np.float32)
    bias = rng.normal(size=rows).astype(np.float32) if m % 2 else None
    y = np.full((m, rows), np.nan, np.float32)
    code = quant_format_code(fmt, cols)
    assert code in WIDE.values()
    args = [_ptr(named.get(k, named["qweight"])) for k in ("qweight", "qhigh", "scales", "mins", "super", "super_mins")]
    assert pool.ember_linear_k(_ptr(x), *args, _ptr(bias), _ptr(y), m, rows, cols, code, int(bias is not None)) == 0
    expected = x.astype(np.float64) @ reference_w.T + (0 if bias is None else bias)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("cols", [384, 576])  # 576 = 4.5 groups of 128: a partial last group (SmolLM2's width)
def test_group_128_matches_the_scheme_dequantizer(pool, m, cols):
    fmt = SCHEMES["q4f16g128"].format
    w = _weights(9, cols, seed=m)
    packed = quantize(w, fmt)
    x = np.random.default_rng(m).normal(size=(m, cols)).astype(np.float32)
    y = _linear(pool, x, packed.pieces(), None, 9, cols, 128, Q4)
    expected = x.astype(np.float64) @ dequantize(packed, fmt, cols).astype(np.float64).T
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m", [1, 3, 6])
@pytest.mark.parametrize("cols", [64, 37])  # 37: a tail after the 16-lane vectors
def test_half_precision_weights(pool, dtype, m, cols):
    rng = np.random.default_rng(cols + m)
    w32 = rng.normal(0, 0.1, (11, cols)).astype(np.float32)
    if dtype == "float16":
        w, value = w32.astype(np.float16), w32.astype(np.float16).astype(np.float64)
    else:  # bfloat16 = the top 16 bits of a float32
        w = (w32.view(np.uint32) >> 16).astype(np.uint16)
        value = (w.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    x = rng.normal(size=(m, cols)).astype(np.float32)
    bias = rng.normal(size=11).astype(np.float32)
    y = _linear(pool, x, [w.view(np.uint16)], bias, 11, cols, 0, F16 if dtype == "float16" else BF16)
    np.testing.assert_allclose(y, x.astype(np.float64) @ value.T + bias, rtol=1e-5, atol=1e-5)


def _paged(rng, lengths, h_kv, d, page_size):
    """A shuffled paged cache holding `lengths` tokens per sequence; returns pages, indptr, values, last lens and
    each sequence's dense K, V [len, h_kv, d]."""
    counts = [-(-n // page_size) for n in lengths]
    total = sum(counts) + 2
    pages = rng.normal(size=(total, 2, h_kv, page_size, d)).astype(np.float32)
    order = rng.permutation(total)[: sum(counts)].astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    last = np.array([n - (c - 1) * page_size if c else 0 for n, c in zip(lengths, counts)], np.int32)
    dense = []
    for b, n in enumerate(lengths):
        ids = order[indptr[b]:indptr[b + 1]]
        kv = pages[ids].transpose(1, 0, 3, 2, 4).reshape(2, -1, h_kv, d)[:, :n]  # [2, len, h_kv, d]
        dense.append(kv)
    return pages, indptr, order, last, dense


@pytest.mark.parametrize("lengths,h_q,h_kv,d,window,softcap", [
    ([1, 37, 130], 6, 2, 64, 0, 0.0), ([0, 16, 200], 4, 4, 128, 0, 0.0), ([64], 9, 3, 64, 0, 0.0),
    ([1000], 9, 3, 64, 0, 0.0),  # one long sequence: its keys split into segments, merged after
    ([300, 700], 32, 2, 64, 0, 0.0),  # 16 query heads per kv head: two passes of the group
    ([5, 40, 300], 8, 4, 256, 24, 0.0),  # Gemma's head_dim, a window shorter than two sequences
    ([3, 90, 1000], 8, 4, 64, 0, 1.5),  # soft-capped scores (Gemma 2), capped hard enough to matter
])
def test_decode_attention_matches_softmax(pool, lengths, h_q, h_kv, d, window, softcap):
    rng = np.random.default_rng(len(lengths) + d)
    page_size, sm_scale = 16, 1 / np.sqrt(d)
    pages, indptr, values, last, dense = _paged(rng, lengths, h_kv, d, page_size)
    q = rng.normal(size=(len(lengths), h_q, d)).astype(np.float32)
    out = np.full_like(q, np.nan)
    lse = np.full((len(lengths), h_q), np.nan, np.float32)
    rc = pool.ember_decode_attention(_ptr(q), _ptr(pages), _ptr(indptr), _ptr(values), _ptr(last), _ptr(out),
                                     _ptr(lse), len(lengths), h_q, h_kv, d, page_size, sm_scale, window, softcap)
    assert rc == 0
    for b, n in enumerate(lengths):
        for h in range(h_q):
            if n == 0:  # TVM's convention for an empty sequence
                np.testing.assert_array_equal(out[b, h], 0)
                assert lse[b, h] == pytest.approx(-5e4)
                continue
            k, v = dense[b][0][:, h // (h_q // h_kv)], dense[b][1][:, h // (h_q // h_kv)]
            if window:
                k, v = k[-window:], v[-window:]
            scores = (k.astype(np.float64) @ q[b, h]) * sm_scale
            if softcap:
                scores = softcap * np.tanh(scores / softcap)
            scores = scores * np.log2(np.e)
            p = np.exp2(scores - scores.max())
            np.testing.assert_allclose(out[b, h], (p / p.sum()) @ v, rtol=2e-5, atol=2e-6)
            assert lse[b, h] == pytest.approx(scores.max() + np.log2(p.sum()), abs=2e-5)


def test_decode_attention_refuses_head_dims_it_cannot_vectorize(lib):
    dummy = np.zeros(64, np.float32)
    args = [_ptr(dummy)] * 7
    assert lib.ember_decode_attention(*args, 1, 2, 2, 24, 16, 1.0, 0, 0.0) == -1  # d not a multiple of 16
    assert lib.ember_decode_attention(*args, 1, 3, 2, 64, 16, 1.0, 0, 0.0) == -1  # heads not a multiple of kv heads


def _rope_reference(x, pos, inv_freq, rotary):
    half = rotary // 2
    angle = pos[:, None].astype(np.float64) * inv_freq[None, :].astype(np.float64)  # [n, half]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    out = x.astype(np.float64).copy()
    a, b = x[..., :half], x[..., half:rotary]
    out[..., :half] = a * cos - b * sin
    out[..., half:rotary] = b * cos + a * sin
    return out


@pytest.mark.parametrize("scaling,rotary", [(None, 64), (None, 32), ({"rope_type": "llama3", "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, 64)])
@pytest.mark.parametrize("tokens", [1, 19])  # one decode token (serial) and a prefill chunk (parallel)
def test_rope_split_matches_the_hf_frequencies(pool, scaling, rotary, tokens):
    from ember.targets.rope import inverse_frequencies

    h_q, h_kv, d, theta = 6, 2, 64, 500000.0
    rng = np.random.default_rng(tokens + rotary)
    qkv = rng.normal(size=(tokens, h_q + 2 * h_kv, d)).astype(np.float32)
    pos = rng.integers(0, 4000, tokens).astype(np.int32)
    q, k, v = (np.full((tokens, h, d), np.nan, np.float32) for h in (h_q, h_kv, h_kv))
    f = scaling or {}
    rc = pool.ember_rope_split(_ptr(qkv), _ptr(pos), _ptr(q), _ptr(k), _ptr(v), tokens, h_q, h_kv, d, rotary, 1,
                               1.0, theta, f.get("factor", 0.0), f.get("low_freq_factor", 0.0),
                               f.get("high_freq_factor", 0.0), f.get("original_max_position_embeddings", 0.0))
    assert rc == 0
    inv = inverse_frequencies(theta, rotary, scaling)
    rotated = _rope_reference(qkv[:, :h_q + h_kv], pos, inv, rotary)
    # float32 angles of positions up to 4000: a few ulp of the angle
    np.testing.assert_allclose(q, rotated[:, :h_q], atol=2e-3)
    np.testing.assert_allclose(k, rotated[:, h_q:], atol=2e-3)
    np.testing.assert_array_equal(v, qkv[:, h_q + h_kv:])
    rc = pool.ember_rope_split(_ptr(qkv), _ptr(pos), _ptr(q), _ptr(k), _ptr(v), tokens, h_q, h_kv, d, rotary, 0,
                               1.0, theta, 0.0, 0.0, 0.0, 0.0)  # apply_rope = 0: a plain split
    assert rc == 0
    np.testing.assert_array_equal(q, qkv[:, :h_q])
    np.testing.assert_array_equal(k, qkv[:, h_q:h_q + h_kv])


MOE_PIECES = ("qweight", "qhigh", "scales", "mins", "super", "super_mins")


def _moe_weight(pieces: dict[str, np.ndarray], code: int, group: int = 0) -> list:
    """ember_moe's arguments of one stacked weight: its 6 piece pointers, their bytes per expert, format, group."""
    first = next(iter(pieces.values()))
    chosen = [pieces.get(name) for name in MOE_PIECES]
    return ([_ptr(first if a is None else a) for a in chosen]
            + [0 if a is None else a[0].nbytes for a in chosen] + [code, group])


def _moe_reference(x, logits, gate, up, down, k):
    """softmax top-k routing (renormalized) and SwiGLU experts in float64, from float [E, N, K] weights."""
    y = np.zeros((x.shape[0], down.shape[1]))
    for t in range(x.shape[0]):
        p = np.exp(logits[t] - logits[t].max())
        p /= p.sum()
        top = np.argsort(-p, kind="stable")[:k]
        for e in top:
            g = gate[e] @ x[t]
            h = g / (1 + np.exp(-g)) * (up[e] @ x[t])
            y[t] += p[e] / p[top].sum() * (down[e] @ h)
    return y


def test_moe_routes_nan_logits_in_range_and_the_other_tokens_as_numpy(pool):
    """ember_moe with fp16 experts: a token whose router logits are NaN (an overflowed model) must not index past
    the experts; the other tokens equal softmax top-k routing and SwiGLU experts in float64."""
    rng = np.random.default_rng(0)
    tokens, experts, hidden, inter, k = 3, 4, 64, 32, 2
    gate, up = (rng.normal(0, 0.1, (experts, inter, hidden)).astype(np.float16) for _ in range(2))
    down = rng.normal(0, 0.1, (experts, hidden, inter)).astype(np.float16)
    x = rng.normal(size=(tokens, hidden)).astype(np.float32)
    logits = rng.normal(size=(tokens, experts)).astype(np.float32)
    logits[1] = np.nan
    y = np.zeros((tokens, hidden), np.float32)
    weights = [a for w in (gate, up, down) for a in _moe_weight({"qweight": w}, F16)]
    assert pool.ember_moe(_ptr(x), _ptr(logits), *weights, _ptr(y), tokens, experts, hidden, inter, k, 1) == 0
    expected = _moe_reference(x.astype(np.float64), logits, *(w.astype(np.float64) for w in (gate, up, down)), k)
    for t in (0, 2):
        np.testing.assert_allclose(y[t], expected[t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tokens", [1, 7])  # GEMV (one row per expert) and GEMM rows
@pytest.mark.parametrize("types", [("Q4_K", "Q4_K", "Q6_K"), ("Q2_K", "Q3_K", "Q5_K"), ("Q5_0", "Q5_1", "Q4_1"),
                                   ("Q8_0", "Q4_0", "Q6_K")], ids="-".join)
def test_moe_experts_in_gguf_formats_match_gguf_dequantize(pool, tokens, types):
    """ember_moe with each of gate, up and down in its own GGUF format (a Q4_K_M file's Q4_K gate/up and Q6_K down,
    the other K-quants, the 5-bit and the 4/8-bit group formats) against float64 experts dequantized by gguf."""
    rng = np.random.default_rng(tokens)
    experts, hidden, inter, k = 4, 256, 512, 2
    x = rng.normal(size=(tokens, hidden)).astype(np.float32)
    logits = rng.normal(size=(tokens, experts)).astype(np.float32)
    args, reference = [], []
    for ggml_type, (rows, cols) in zip(types, ((inter, hidden), (inter, hidden), (hidden, inter))):
        if ggml_type in BLOCK_BYTES:
            raw = _kblocks(ggml_type, experts * rows, cols, seed=len(args))
        else:
            w = rng.normal(0, 0.05, (experts * rows, cols)).astype(np.float32)
            raw = gguf.quants.quantize(w, Q[ggml_type])
        reference.append(gguf.quants.dequantize(raw, Q[ggml_type]).astype(np.float64).reshape(experts, rows, cols))
        fmt = SCHEMES[GGML_TO_SCHEME[ggml_type]].format
        packed = from_ggml_blocks(raw, ggml_type, cols)
        named = {n: np.ascontiguousarray(a.reshape(experts, rows, *a.shape[1:]))
                 for n, a in zip(fmt.piece_names, packed.pieces())}
        args += _moe_weight(named, quant_format_code(fmt, cols), fmt.group_size)
    y = np.full((tokens, hidden), np.nan, np.float32)
    assert pool.ember_moe(_ptr(x), _ptr(logits), *args, _ptr(y), tokens, experts, hidden, inter, k, 1) == 0
    expected = _moe_reference(x.astype(np.float64), logits, *reference, k)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
