"""numpy side of the schemes: packing, quantization vs gguf-py, GGUF block repacking, the materialize transforms."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from ember.ir.graph import Param
from ember.ir.types import TensorType
from ember.passes import quant_weights
from ember.passes.block_source import BlockSource
from ember.passes.materialize import load_sources, materialize
from ember.passes.quant_schemes import (
    SCHEMES,
    Packed,
    dequantize,
    from_ggml_blocks,
    pack_nibbles,
    quantize,
    unpack_nibbles,
)

GGUF_SCHEMES = {Q.Q8_0: "q8f16", Q.Q4_0: "q4f16", Q.Q4_1: "q4f16_1", Q.Q5_0: "q5f16", Q.Q5_1: "q5f16_1"}
FLOAT_QUANTIZED = [s for s in SCHEMES if SCHEMES[s].quantized and not SCHEMES[s].format.super_block]


def weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (rows, cols)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero group (scale 0)
    w[1, 5] = 3.0  # an outlier
    return w


@pytest.mark.parametrize("cols", [8, 96, 100, 1])
def test_pack_unpack_round_trip(cols):
    codes = np.random.default_rng(0).integers(0, 16, (5, cols), dtype=np.uint8)
    words = pack_nibbles(codes)
    assert words.dtype == np.uint32 and words.shape == (5, -(-cols // 8))
    np.testing.assert_array_equal(unpack_nibbles(words, cols), codes)


def test_nibble_order_is_consecutive_k_in_one_word():
    codes = np.arange(16, dtype=np.uint8).reshape(1, 16)  # k = 8j + i in bits 4i..4i+3 of word j
    np.testing.assert_array_equal(pack_nibbles(codes), [[0x76543210, 0xFEDCBA98]])


@pytest.mark.parametrize("scheme", FLOAT_QUANTIZED)
@pytest.mark.parametrize("cols", [128, 160, 100])  # 160: partial group of 128; 100: partial word too
def test_quantize_round_trip_error_is_bounded(scheme, cols):
    fmt = SCHEMES[scheme].format
    w = weights(16, cols)
    packed = quantize(w, fmt)
    assert [p.shape for p in packed.pieces()] == [tuple(t.shape) for t in fmt.piece_types(16, cols)]
    assert [str(p.dtype) for p in packed.pieces()] == [t.dtype for t in fmt.piece_types(16, cols)]
    back = dequantize(packed, fmt, cols)
    step = np.abs(packed.scales.astype(np.float32))[:, np.arange(cols) // fmt.group_size]
    # half a step from rounding (a whole one where 4-bit symmetric clips at +7), plus the fp16 rounding of scales
    bound = (0.56 if fmt.bits == 8 else 1.05) * step + 1e-6
    assert np.all(np.abs(back - w) <= bound)
    np.testing.assert_array_equal(back[0, :32], 0.0)
    # requantizing dequantized values is the identity: a GGUF-derived f32 model quantizes back to its GGUF blocks
    for a, b in zip(quantize(back, fmt).pieces(), packed.pieces()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("qtype", list(GGUF_SCHEMES), ids=lambda q: q.name)
def test_quantize_is_bit_exact_with_gguf(qtype):
    """ember's quantizer and gguf-py's (ggml's reference) give the same codes, scales and mins."""
    w = weights(24, 256, seed=1)
    ours = quantize(w, SCHEMES[GGUF_SCHEMES[qtype]].format)
    theirs = from_ggml_blocks(gguf.quants.quantize(w, qtype), qtype.name, 256)
    for a, b in zip(ours.pieces(), theirs.pieces()):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("qtype", list(GGUF_SCHEMES), ids=lambda q: q.name)
def test_gguf_blocks_unpack_to_exactly_gguf_dequantize(qtype):
    w = weights(24, 256, seed=2)
    blocks = gguf.quants.quantize(w, qtype)
    fmt = SCHEMES[GGUF_SCHEMES[qtype]].format
    ours = dequantize(from_ggml_blocks(blocks, qtype.name, 256), fmt, 256)
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(blocks, qtype))


def test_gguf_random_blocks_repack_exactly():
    """Any byte pattern (not only what a quantizer emits) survives the repack: all 16 codes, signed int8, odd scales."""
    rng = np.random.default_rng(3)
    for qtype, size in ((Q.Q4_0, 18), (Q.Q4_1, 20), (Q.Q8_0, 34)):
        raw = rng.integers(0, 256, (6, 4 * size), dtype=np.uint8).reshape(6, 4, size)
        raw[..., :2] = rng.uniform(-1, 1, (6, 4)).astype(np.float16).view(np.uint8).reshape(6, 4, 2)
        if qtype == Q.Q4_1:
            raw[..., 2:4] = rng.uniform(-1, 1, (6, 4)).astype(np.float16).view(np.uint8).reshape(6, 4, 2)
        raw = raw.reshape(6, -1)
        fmt = SCHEMES[GGUF_SCHEMES[qtype]].format
        ours = dequantize(from_ggml_blocks(raw, qtype.name, 128), fmt, 128)
        np.testing.assert_array_equal(ours, gguf.quants.dequantize(raw, qtype))


class Provider:
    def __init__(self, arrays):
        self.arrays, self.reads = arrays, 0

    def get(self, name):
        self.reads += 1
        return self.arrays[name]

    def origin(self, name):
        return name


def block_source(blocks: np.ndarray, qtype: Q, dequantized: list | None = None, key=None) -> BlockSource:
    """A BlockSource of GGUF blocks whose dequantizations are recorded in `dequantized`."""
    rows, cols = blocks.shape[0], blocks.shape[1] // GGML_QUANT_SIZES[qtype][1] * GGML_QUANT_SIZES[qtype][0]

    def values():
        if dequantized is not None:
            dequantized.append(qtype)
        return gguf.quants.dequantize(blocks, qtype)

    extra = {} if key is None else {"key": key}
    return BlockSource(qtype.name, (rows, cols), lambda: blocks, values, **extra)


def pieces_of(name: str, scheme: str, sources: list[str], rows: int, cols: int) -> list[Param]:
    fmt = SCHEMES[scheme].format
    kinds = ("quant_weight", "quant_scales", "quant_mins")
    return [Param(f"{name}.{i}", ty, {"sources": sources, "transform": kind, "scheme": scheme, "quantized_from": name})
            for i, (kind, ty) in enumerate(zip(kinds, fmt.piece_types(rows, cols)))]


def test_gguf_passthrough_through_materialize_with_row_fusion(monkeypatch):
    """Q4_1 blocks of two tensors concatenated on rows (a fused weight) are repacked once, never requantized nor
    dequantized."""
    rng = np.random.default_rng(4)
    arrays, dequantized, blocks = {}, [], {}
    for name in ("a", "b"):
        blocks[name] = gguf.quants.quantize(rng.normal(0, 0.1, (8, 64)).astype(np.float32), Q.Q4_1)
        arrays[name] = block_source(blocks[name], Q.Q4_1, dequantized, key=name)
    calls, repacks = [], []
    monkeypatch.setattr(quant_weights, "quantize", lambda *a: calls.append(a) or quantize(*a))
    monkeypatch.setattr(quant_weights, "from_ggml_blocks", lambda *a: repacks.append(a) or from_ggml_blocks(*a))
    params = pieces_of("ab", "q4f16_1", ["a", "b"], 16, 64)
    made = [materialize(p, Provider(arrays)) for p in params]
    assert calls == [] and dequantized == [] and len(repacks) == 1  # repacked from blocks, once for 3 pieces
    expected = from_ggml_blocks(np.concatenate([blocks["a"], blocks["b"]]), "Q4_1", 64)
    for got, want in zip(made, expected.pieces()):
        np.testing.assert_array_equal(got, want)


def test_other_schemes_requantize_and_quantize_once(monkeypatch):
    rng = np.random.default_rng(5)
    blocks = gguf.quants.quantize(rng.normal(0, 0.1, (8, 64)).astype(np.float32), Q.Q4_1)
    dequantized = []
    calls = []
    monkeypatch.setattr(quant_weights, "quantize", lambda *a: calls.append(a) or quantize(*a))
    provider = Provider({"w": block_source(blocks, Q.Q4_1, dequantized, key="w")})
    made = [materialize(p, provider) for p in pieces_of("w", "q4f16", ["w"], 8, 64)]
    assert len(calls) == 1 and provider.reads == 2 and len(dequantized) == 1  # two pieces, one quantization
    values = gguf.quants.dequantize(blocks, Q.Q4_1)
    np.testing.assert_array_equal(dequantize(Packed(*made), SCHEMES["q4f16"].format, 64),
                                  dequantize(quantize(values, SCHEMES["q4f16"].format), SCHEMES["q4f16"].format, 64))
    # another tensor under the same name (a second compile in this process) is quantized again, not reused
    provider.arrays["w"] = values * 2
    scales = materialize(pieces_of("w", "q4f16", ["w"], 8, 64)[1], provider)
    assert len(calls) == 2
    np.testing.assert_array_equal(scales, made[1] * 2)
    # and so is a block source of other data (keys tell tensors apart, not names)
    provider.arrays["w"] = block_source(gguf.quants.quantize(values * 2, Q.Q4_1), Q.Q4_1, dequantized, key="w2")
    materialize(pieces_of("w", "q4f16", ["w"], 8, 64)[1], provider)
    assert len(calls) == 3


def test_float_consumers_get_exactly_gguf_dequantized_values():
    blocks = gguf.quants.quantize(weights(4, 64), Q.Q8_0)
    dequantized = []
    source = block_source(blocks, Q.Q8_0, dequantized)
    param = Param("w", TensorType((4, 64), "float32"), {"sources": ["w"]})
    out = materialize(param, Provider({"w": source}))
    assert dequantized == [Q.Q8_0]
    np.testing.assert_array_equal(out, gguf.quants.dequantize(blocks, Q.Q8_0))


def test_block_source_row_concatenation():
    blocks = gguf.quants.quantize(np.ones((2, 32), np.float32), Q.Q8_0)
    q4 = gguf.quants.quantize(np.ones((1, 32), np.float32), Q.Q4_1)
    dequantized = []
    a, b = block_source(blocks, Q.Q8_0, dequantized, key="a"), block_source(blocks, Q.Q8_0, dequantized, key="b")
    fused = BlockSource.concat_rows([a, b])
    assert fused.ggml_type == "Q8_0" and fused.shape == (4, 32) and fused.blocks().shape == (4, 34)
    assert fused.key == BlockSource.concat_rows([a, b]).key != BlockSource.concat_rows([b, a]).key
    assert dequantized == []
    np.testing.assert_array_equal(fused.values(), np.concatenate([gguf.quants.dequantize(blocks, Q.Q8_0)] * 2))
    assert BlockSource.concat_rows([a, block_source(q4, Q.Q4_1)]) is None  # mixed types: floats
    assert BlockSource.concat_rows([a, np.ones((1, 32), np.float32)]) is None
    param = Param("ab", TensorType((3, 32), "float32"), {"sources": ["a", "q4"]})
    mixed = load_sources(param, Provider({"a": a, "q4": block_source(q4, Q.Q4_1)}))
    assert isinstance(mixed, np.ndarray) and mixed.shape == (3, 32)
    wide = Param("aa", TensorType((2, 64), "float32"), {"sources": ["a", "a"], "concat_axis": 1})
    assert isinstance(load_sources(wide, Provider({"a": a})), np.ndarray)
