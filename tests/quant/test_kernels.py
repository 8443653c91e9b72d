"""Each quantized kernel built for cpu, against numpy: dequantize, then matmul (or gather)."""
from __future__ import annotations

import numpy as np
import pytest
from kernel_harness import buffer_allocations, export_op, run_op
from tvm import tirx

from ember.passes.quant_schemes import SCHEMES, dequantize, quantize

# schemes ember makes from float weights (the K-quants are only kept from GGUF files: their kernels are checked on
# random super blocks in test_kquant_codecs.py and test_native_kernels.py)
QUANTIZED = [name for name, s in SCHEMES.items() if s.quantized and not s.format.super_block]


def quant_inputs(scheme: str, rows: int, cols: int, seed: int = 0):
    fmt = SCHEMES[scheme].format
    w = np.random.default_rng(seed).normal(0, 1, (rows, cols)).astype(np.float32)
    packed = quantize(w, fmt)
    attrs = {"scheme": scheme, **fmt.attrs(), "in_features": cols}
    pieces = dict(zip(fmt.piece_names, packed.pieces(), strict=True))
    return attrs, pieces, dequantize(packed, fmt, cols)


@pytest.mark.parametrize("scheme", QUANTIZED)
@pytest.mark.parametrize("cols", [96, 100])  # 100: a partial 8-code word and a partial group
def test_quant_linear_f32_with_bias(scheme, cols):
    attrs, pieces, w = quant_inputs(scheme, 40, cols)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (1, 7, cols)).astype(np.float32)
    bias = rng.normal(0, 1, 40).astype(np.float32)
    y = run_op("quant_linear", attrs, {"x": x, **pieces, "bias": bias}, shapes={"x": [1, "t", cols]})
    assert y.dtype == np.float32 and y.shape == (1, 7, 40)
    np.testing.assert_allclose(y, x @ w.T + bias, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("scheme", QUANTIZED)
@pytest.mark.parametrize("tokens", [[1, 1], ["b", 1]])  # static (the GEMV form) and symbolic batch
def test_quant_linear_f16(scheme, tokens):
    """The GPU targets' form (a dequant stage, Target.dequant_stage), built for cpu."""
    attrs, pieces, w = quant_inputs(scheme, 64, 128, seed=2)
    x = np.random.default_rng(3).normal(0, 1, (1, 1, 128)).astype(np.float16)
    y = run_op("quant_linear", attrs, {"x": x, **pieces}, shapes={"x": tokens + [128]}, dequant_stage=True)
    assert y.dtype == np.float16
    if tokens[0] != 1:  # a GEMM-shaped kernel dequantizes to the activation dtype (tensor cores on GPUs)
        w = w.astype(np.float16).astype(np.float32)
    ref = x.astype(np.float32) @ w.T  # fp32 accumulation, one rounding to fp16 at the end
    np.testing.assert_allclose(y.astype(np.float32), ref, rtol=2e-3, atol=2e-2)


@pytest.mark.parametrize("scheme", QUANTIZED)
def test_quant_embedding_gathers_dequantized_rows(scheme):
    attrs, pieces, w = quant_inputs(scheme, 50, 64, seed=4)
    ids = np.array([[0, 7, 49, 3, 60, -2]], dtype=np.int32)  # 60 and -2 are out of range: clipped
    out = run_op("quant_embedding", {**attrs, "dtype": "float32"}, {"ids": ids, **pieces}, shapes={"ids": [1, "t"]})
    np.testing.assert_array_equal(out[0], w[np.clip(ids[0], 0, 49)])


@pytest.mark.parametrize("scheme", ["q4f16_1", "q8f16"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dequantize_happens_inside_the_matmul_kernel(scheme, dtype):
    """After the cpu pipeline, the one kernel reading packed codes writes y[..., N]; no buffer holds [N, K]."""
    from ember.targets.cpu.build import _pipeline, cpu_target

    rows, cols = 256, 512
    attrs, pieces, _ = quant_inputs(scheme, rows, cols)
    specs = {"x": ([1, "t", cols], dtype), **{n: (list(a.shape), str(a.dtype)) for n, a in pieces.items()}}
    mod = _pipeline(cpu_target())(export_op("quant_linear", attrs, specs))
    readers = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)
               and any(getattr(p.ty, "dtype", None) in ("uint32", "int8") for p in f.params)}
    assert list(readers) == [f"{scheme}_linear"]
    out = readers[f"{scheme}_linear"].params[-1]
    assert int(out.shape[-1]) == rows and str(out.ty.dtype) == dtype
    allocations = buffer_allocations(mod)[f"{scheme}_linear"]
    assert all(size <= cols for size in allocations.values()), allocations  # at most one row of the weight


def kblock_inputs(ggml_type: str, rows: int, cols: int, seed: int = 0):
    """Random GGUF blocks of a kept-native type (test_kquant_codecs.random_blocks), their pieces, and gguf's
    dequantized float32 weight: the oracle is gguf-py, not ember's numpy codec."""
    import gguf
    from test_kquant_codecs import random_blocks

    from ember.passes.quant_kblocks import BLOCK_BYTES
    from ember.passes.quant_schemes import GGML_TO_SCHEME, from_ggml_blocks

    scheme = GGML_TO_SCHEME[ggml_type]
    fmt = SCHEMES[scheme].format
    raw = random_blocks(ggml_type, rows, cols // BLOCK_BYTES[ggml_type][1], seed, scale=1e-2)
    pieces = dict(zip(fmt.piece_names, from_ggml_blocks(raw, ggml_type, cols).pieces(), strict=True))
    w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[ggml_type])
    return {"scheme": scheme, **fmt.attrs(), "in_features": cols}, pieces, w


KBLOCK_TYPES = ["Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("ggml_type", KBLOCK_TYPES)
@pytest.mark.parametrize("tokens", [[1, 1], ["b", 1]])
def test_kept_native_generic_lowering_matches_gguf(ggml_type, tokens):
    """The generic lowering (every GPU target's batched/prefill path; cuda's only one for Q2_K/Q3_K) of GGUF blocks
    against x @ gguf.quants.dequantize(blocks); the embedding gathers gguf's rows bit for bit."""
    attrs, pieces, w = kblock_inputs(ggml_type, 48, 512, seed=len(ggml_type) + len(tokens))
    x = np.random.default_rng(3).normal(0, 1, (1, 1, 512)).astype(np.float16)
    y = run_op("quant_linear", attrs, {"x": x, **pieces}, shapes={"x": tokens + [512]}, dequant_stage=True)
    ref = x.astype(np.float32) @ (w if tokens[0] == 1 else w.astype(np.float16).astype(np.float32)).T
    np.testing.assert_allclose(y.astype(np.float32), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    ids = np.array([[0, 47, 5, 5]], dtype=np.int32)
    out = run_op("quant_embedding", {**attrs, "dtype": "float32"}, {"ids": ids, **pieces}, shapes={"ids": [1, "t"]})
    np.testing.assert_array_equal(out[0].view(np.uint32), w[ids[0]].view(np.uint32))
