"""Weight schemes of `--quant` and their numpy codecs: quantize, pack, unpack, and repack GGUF blocks.

Layout (ir/ops_quant.py): per output row n, K contiguous. 4-bit codes go 8 to a uint32 word, consecutive k in one
word (nibble i of word j is k = 8j + i); 8-bit codes are int8[N, K]; scales and mins are float16[N, ceil(K/group)].
Why this layout: it is the one TVM's dlight GEMV rule reads best (../shared/guide/tvm-quant-gemv.md). Lanes run
along K, so a warp reads one contiguous run of a row, and dlight's normalize sees `W[n, k // 8]` as an (r, c=8)
access it vectorizes (one 4-byte load = 8 codes). Row-major [N, K] also keeps fused weights (q|k|v, gate|up) a
plain row concatenation, and the dequantize stays one expression (`(w >> 4*(k%8)) & 15`) that TVM inlines into
the matmul. GGUF's own nibble order (byte i holds k = i and i + 16 of a 32-block) would split a word across two
half-blocks, so GGUF blocks are repacked once at compile time; the values are untouched, so dequantized weights
equal `gguf.quants.dequantize` bit for bit.

Quantization follows ggml's reference rounding (bit-exact with `gguf.quants.quantize` for the GGUF-shaped schemes):
  sym 8-bit (Q8_0):  s = amax/127, q = round_half_away(w/s)
  sym 4-bit (Q4_0):  s = v/-8 with v the value of largest |w|, q = min(15, trunc(w/s + 8.5)), W = s*(q-8)
  min 4-bit (Q4_1):  s = (max-min)/15, m = min, q = min(15, trunc((w-m)/s + 0.5)), W = s*q + m
A partial last group is padded by repeating its last value, which changes neither its max, min nor amax.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.ops_quant import NIBBLES_PER_WORD, QuantFormat


@dataclass(frozen=True)
class Scheme:
    name: str
    summary: str
    float_dtype: str | None = None  # q0 schemes: weights stored as this float dtype
    format: QuantFormat | None = None  # quantized schemes
    edge: str | None = None  # scheme of the embedding table and LM head (None: this scheme)
    ggml_type: str | None = None  # the GGUF tensor type this scheme holds exactly

    @property
    def quantized(self) -> bool:
        return self.format is not None

    @property
    def edge_scheme(self) -> str:
        return self.edge or self.name


def _q(bits: int, group: int, has_min: bool) -> QuantFormat:
    return QuantFormat(bits, group, has_min)


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("q0f32", "float32 weights", float_dtype="float32", ggml_type="F32"),
    Scheme("q0f16", "float16 weights", float_dtype="float16", ggml_type="F16"),
    Scheme("q0bf16", "bfloat16 weights", float_dtype="bfloat16", ggml_type="BF16"),
    Scheme("q8f16", "int8, symmetric, group 32, fp16 scale (= GGUF Q8_0)", format=_q(8, 32, False), ggml_type="Q8_0"),
    Scheme("q4f16", "int4, symmetric s*(q-8), group 32, fp16 scale (= GGUF Q4_0)", format=_q(4, 32, False),
           edge="q8f16", ggml_type="Q4_0"),
    Scheme("q4f16_1", "int4, s*q + m, group 32, fp16 scale and min (= GGUF Q4_1)", format=_q(4, 32, True),
           edge="q8f16", ggml_type="Q4_1"),
    Scheme("q4f16g128", "int4, symmetric s*(q-8), group 128, fp16 scale", format=_q(4, 128, False), edge="q8f16"),
)}

# GGUF tensor type -> the scheme a tensor of that type is converted into when the file's type decides.
# Exact for F32/F16/BF16/Q8_0/Q4_0/Q4_1; the others are dequantized and requantized (Q4_K keeps a min per group,
# 5- and 6-bit types go up to 8 bits rather than lose precision).
GGML_TO_SCHEME = {"F32": "q0f32", "F16": "q0f16", "BF16": "q0bf16", "Q8_0": "q8f16", "Q4_0": "q4f16",
                  "Q4_1": "q4f16_1", "Q4_K": "q4f16_1", "Q5_0": "q8f16", "Q5_1": "q8f16", "Q5_K": "q8f16",
                  "Q6_K": "q8f16"}
FLOAT_GGML_TYPES = ("F32", "F16", "BF16")


@dataclass
class Packed:
    """One quantized weight: the arrays of its qweight, scales and (optional) mins parameters."""

    qweight: np.ndarray
    scales: np.ndarray
    mins: np.ndarray | None = None

    def pieces(self) -> list[np.ndarray]:
        return [self.qweight, self.scales] + ([self.mins] if self.mins is not None else [])


# -- nibble packing --------------------------------------------------------------------------------------------------
def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [N, K] in 0..15 -> uint32 [N, ceil(K/8)], k = 8j + i in bits 4i..4i+3 of word j."""
    rows, cols = codes.shape
    width = -(-cols // NIBBLES_PER_WORD)
    padded = np.zeros((rows, width * NIBBLES_PER_WORD), dtype=np.uint32)
    padded[:, :cols] = codes
    shifts = np.arange(0, 32, 4, dtype=np.uint32)
    return np.bitwise_or.reduce(padded.reshape(rows, width, NIBBLES_PER_WORD) << shifts, axis=-1)


def unpack_nibbles(words: np.ndarray, cols: int) -> np.ndarray:
    """Inverse of pack_nibbles: uint32 [N, W] -> uint8 codes [N, cols]."""
    shifts = np.arange(0, 32, 4, dtype=np.uint32)
    codes = (words[:, :, None] >> shifts) & np.uint32(15)
    return codes.reshape(words.shape[0], -1)[:, :cols].astype(np.uint8)


# -- quantize / dequantize -------------------------------------------------------------------------------------------
def _groups(w: np.ndarray, group: int) -> np.ndarray:
    """float32 [N, K] -> [N, G, group], the last group padded by repeating its last value."""
    rows, cols = w.shape
    pad = -cols % group
    if pad:
        w = np.pad(w, ((0, 0), (0, pad)), mode="edge")
    return w.reshape(rows, -1, group)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    floored = np.floor(a)
    return np.sign(x) * (floored + np.floor(2 * (a - floored)))


def quantize(w: np.ndarray, fmt: QuantFormat) -> Packed:
    """float [N, K] -> Packed, with ggml's rounding (see the module docstring)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"can only quantize matrices, got shape {list(w.shape)}")
    rows, cols = w.shape
    blocks = _groups(w, fmt.group_size)
    mins = None
    if fmt.bits == 8:
        d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
        codes = _round_half_away(blocks * _inverse(d)).astype(np.int8)
        qweight = codes.reshape(rows, -1)[:, :cols]
    else:
        if fmt.has_min:
            lo = blocks.min(axis=-1, keepdims=True)
            d = (blocks.max(axis=-1, keepdims=True) - lo) / np.float32(15)
            q = np.trunc((blocks - lo) * _inverse(d) + np.float32(0.5))
            mins = lo[..., 0].astype(np.float16)
        else:
            peak = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)
            d = peak / np.float32(-8)
            q = np.trunc(blocks * _inverse(d) + np.float32(8.5))
        codes = q.astype(np.uint8).clip(0, 15)  # uint8 first, as ggml: a (never seen) negative wraps, then clips
        qweight = pack_nibbles(codes.reshape(rows, -1)[:, :cols])
    return Packed(np.ascontiguousarray(qweight), d[..., 0].astype(np.float16), mins)


def codes_of(packed: Packed, fmt: QuantFormat, cols: int) -> np.ndarray:
    """The integer codes q [N, K]: int8 for 8-bit, 0..15 (uint8) for 4-bit."""
    return packed.qweight if fmt.bits == 8 else unpack_nibbles(packed.qweight, cols)


def dequantize(packed: Packed, fmt: QuantFormat, cols: int) -> np.ndarray:
    """Packed -> float32 [N, K], the values the kernels compute with (f32 math, like ggml)."""
    q = codes_of(packed, fmt, cols).astype(np.float32)
    expand = np.arange(cols) // fmt.group_size
    s = packed.scales.astype(np.float32)[:, expand]
    if fmt.has_min:
        return s * q + packed.mins.astype(np.float32)[:, expand]
    return s * (q - 8) if fmt.bits == 4 else q * s


# -- GGUF blocks -----------------------------------------------------------------------------------------------------
_GGML_BLOCKS = {"Q8_0": (34, 2), "Q4_0": (18, 2), "Q4_1": (20, 4)}  # bytes per 32-block, header bytes (d[, m])


def from_ggml_blocks(raw: np.ndarray, ggml_type: str, cols: int) -> Packed:
    """GGUF Q8_0 / Q4_0 / Q4_1 blocks (uint8 [N, bytes per row], rows in HF order) -> Packed, values unchanged."""
    if ggml_type not in _GGML_BLOCKS:
        raise ValueError(f"no exact ember layout for GGUF {ggml_type} blocks")
    size, header = _GGML_BLOCKS[ggml_type]
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(rows, cols // 32, size)
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    mins = blocks[..., 2:4].copy().view(np.float16)[..., 0] if header == 4 else None
    body = blocks[..., header:]
    if ggml_type == "Q8_0":
        return Packed(body.copy().view(np.int8).reshape(rows, cols), scales, mins)
    return Packed(_ggml_nibbles_to_words(body), scales, mins)


_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)


def _compact_nibbles(x: np.ndarray) -> np.ndarray:
    """uint64 holding 8 nibbles at bits 8i -> uint32 holding them at bits 4i."""
    x = (x | (x >> np.uint64(4))) & np.uint64(0x00FF00FF00FF00FF)
    x = (x | (x >> np.uint64(8))) & np.uint64(0x0000FFFF0000FFFF)
    return ((x | (x >> np.uint64(16))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _ggml_nibbles_to_words(body: np.ndarray) -> np.ndarray:
    """The 16 code bytes of Q4_0/Q4_1 blocks (uint8 [N, blocks, 16]; byte i holds k = i low, k = i + 16 high) ->
    pack_nibbles' words [N, blocks * 4], without unpacking to one byte per code: each half block as one uint64."""
    rows, blocks, _ = body.shape
    halves = np.ascontiguousarray(body).view("<u8").astype(np.uint64)  # [N, blocks, 2]: bytes 0-7, 8-15
    words = np.empty((rows, blocks, 4), dtype=np.uint32)
    words[..., 0:2] = _compact_nibbles(halves & _LOW_NIBBLES)  # k = 0-7, 8-15
    words[..., 2:4] = _compact_nibbles((halves >> np.uint64(4)) & _LOW_NIBBLES)  # k = 16-23, 24-31
    return words.reshape(rows, blocks * 4)
