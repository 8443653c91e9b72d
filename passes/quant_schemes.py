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
  5-bit (Q5_0, Q5_1): the same with 16 and 31 for 8 and 15
K-quants (Q2_K .. Q6_K) are never made from float weights here (ggml's search for their scales is not ported):
GGUF files' blocks are repacked (quant_kblocks.py).
A partial last group is padded by repeating its last value, which changes neither its max, min nor amax.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.ops_quant import NIBBLES_PER_WORD, SUPER_BLOCK, QuantFormat


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


def _q(bits: int, group: int, has_min: bool, super_block: int = 0) -> QuantFormat:
    return QuantFormat(bits, group, has_min, super_block)


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
    Scheme("q5f16", "int5, symmetric s*(q-16), group 32, fp16 scale (= GGUF Q5_0)", format=_q(5, 32, False),
           edge="q8f16", ggml_type="Q5_0"),
    Scheme("q5f16_1", "int5, s*q + m, group 32, fp16 scale and min (= GGUF Q5_1)", format=_q(5, 32, True),
           edge="q8f16", ggml_type="Q5_1"),
    Scheme("q2_k", "GGUF Q2_K: int2 s*q - m, groups of 16 in super blocks of 256 (4-bit scale/min codes, fp16 d, "
           "dmin)", format=_q(2, 16, True, SUPER_BLOCK), edge="q6_k", ggml_type="Q2_K"),
    Scheme("q3_k", "GGUF Q3_K: int3 s*(q-4), groups of 16 in super blocks of 256 (6-bit scale codes, fp16 d)",
           format=_q(3, 16, False, SUPER_BLOCK), edge="q6_k", ggml_type="Q3_K"),
    Scheme("q4_k", "GGUF Q4_K: int4 s*q - m, groups of 32 in super blocks of 256 (6-bit scale/min codes, fp16 d, "
           "dmin)", format=_q(4, 32, True, SUPER_BLOCK), edge="q6_k", ggml_type="Q4_K"),
    Scheme("q5_k", "GGUF Q5_K: int5 s*q - m, groups of 32 in super blocks of 256 (6-bit scale/min codes, fp16 d, "
           "dmin)", format=_q(5, 32, True, SUPER_BLOCK), edge="q6_k", ggml_type="Q5_K"),
    Scheme("q6_k", "GGUF Q6_K: int6 s*(q-32), groups of 16 in super blocks of 256 (int8 scale codes, fp16 d)",
           format=_q(6, 16, False, SUPER_BLOCK), ggml_type="Q6_K"),
)}

# GGUF tensor type -> the scheme holding it exactly (a tensor of that type keeps it when the file's types decide).
GGML_TO_SCHEME = {s.ggml_type: s.name for s in SCHEMES.values() if s.ggml_type is not None}
FLOAT_GGML_TYPES = ("F32", "F16", "BF16")


@dataclass
class Packed:
    """One quantized weight: the arrays of its pieces (ir/ops_quant.py), None where the format has no such piece."""

    qweight: np.ndarray
    scales: np.ndarray
    mins: np.ndarray | None = None
    qhigh: np.ndarray | None = None  # 3-, 5- and 6-bit: the codes' bits above qweight's (QuantFormat.low_bits)
    super: np.ndarray | None = None  # super blocks: fp16 d
    super_mins: np.ndarray | None = None  # super blocks with mins: fp16 dmin

    def piece(self, name: str) -> np.ndarray:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"this packed weight has no {name} piece")
        return value

    def pieces(self) -> list[np.ndarray]:
        names = ("qweight", "qhigh", "scales", "mins", "super", "super_mins")
        return [getattr(self, n) for n in names if getattr(self, n) is not None]


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
    if fmt.super_block or fmt.bits in (2, 3, 6):
        raise ValueError(f"ember does not quantize float weights into {fmt.bits}-bit super blocks (GGUF K-quants): "
                         "they are kept from GGUF files as they are (quantize with llama.cpp's llama-quantize)")
    rows, cols = w.shape
    blocks = _groups(w, fmt.group_size)
    mins = None
    if fmt.bits == 8:
        d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
        codes = _round_half_away(blocks * _inverse(d)).astype(np.int8)
        return Packed(np.ascontiguousarray(codes.reshape(rows, -1)[:, :cols]), d[..., 0].astype(np.float16))
    top = (1 << fmt.bits) - 1
    if fmt.has_min:
        lo = blocks.min(axis=-1, keepdims=True)
        d = (blocks.max(axis=-1, keepdims=True) - lo) / np.float32(top)
        q = np.trunc((blocks - lo) * _inverse(d) + np.float32(0.5))
        mins = lo[..., 0].astype(np.float16)
    else:
        peak = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)
        d = peak / np.float32(-fmt.offset)
        q = np.trunc(blocks * _inverse(d) + np.float32(fmt.offset + 0.5))
    codes = q.astype(np.uint8).clip(0, top).reshape(rows, -1)[:, :cols]  # uint8 first, as ggml: then clips
    qhigh = pack_high_bits(codes >> np.uint8(4), fmt.bits - 4) if fmt.bits > 4 else None
    return Packed(np.ascontiguousarray(pack_nibbles(codes & np.uint8(15))), d[..., 0].astype(np.float16), mins,
                  qhigh=qhigh)


def codes_of(packed: Packed, fmt: QuantFormat, cols: int) -> np.ndarray:
    """The integer codes q [N, K]: int8 for 8-bit, 0..2^bits-1 (uint8) otherwise."""
    if fmt.bits == 8:
        return packed.qweight
    if fmt.low_bits == 2:
        codes = unpack_high_bits(packed.qweight, 2, cols)
    else:
        codes = unpack_nibbles(packed.qweight, cols)
    if fmt.high_bits:
        codes |= unpack_high_bits(packed.piece("qhigh"), fmt.high_bits, cols) << np.uint8(fmt.low_bits)
    return codes


def group_scales(packed: Packed, fmt: QuantFormat) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 s and m per group [N, G] (m None for symmetric formats); super blocks: s = d * code and
    m = -(dmin * code), exact in float32 (an 11-bit significand times a code of at most 8 bits)."""
    if not fmt.super_block:
        mins = packed.mins.astype(np.float32) if fmt.has_min else None
        return packed.scales.astype(np.float32), mins
    per = fmt.super_block // fmt.group_size
    groups = packed.scales.shape[1]
    expand = np.arange(groups) // per
    codes, min_codes = packed.scales, packed.mins
    if fmt.shared_codes:
        codes, min_codes = packed.scales & np.uint8(15), packed.scales >> np.uint8(4)
    s = packed.super.astype(np.float32)[:, expand] * codes.astype(np.float32)
    if not fmt.has_min:
        return s, None
    return s, -(packed.super_mins.astype(np.float32)[:, expand] * min_codes.astype(np.float32))


def dequantize(packed: Packed, fmt: QuantFormat, cols: int) -> np.ndarray:
    """Packed -> float32 [N, K], the values the kernels compute with (f32 math, like ggml)."""
    q = codes_of(packed, fmt, cols).astype(np.float32)
    expand = np.arange(cols) // fmt.group_size
    s, m = group_scales(packed, fmt)
    if m is not None:
        return s[:, expand] * q + m[:, expand]
    return s[:, expand] * (q - fmt.offset) if fmt.offset else q * s[:, expand]


def pack_high_bits(high: np.ndarray, width: int) -> np.ndarray:
    """uint8 [N, K] of `width`-bit values (1 or 2) -> uint32 [N, ceil(K*width/32)]: value k in bits
    width*(k % per)... of word k // per, per = 32 / width."""
    rows, cols = high.shape
    per = 32 // width
    words = -(-cols // per)
    padded = np.zeros((rows, words * per), dtype=np.uint32)
    padded[:, :cols] = high
    shifts = np.arange(0, 32, width, dtype=np.uint32)
    return np.bitwise_or.reduce(padded.reshape(rows, words, per) << shifts, axis=-1)


def unpack_high_bits(words: np.ndarray, width: int, cols: int) -> np.ndarray:
    shifts = np.arange(0, 32, width, dtype=np.uint32)
    values = (words[:, :, None] >> shifts) & np.uint32((1 << width) - 1)
    return values.reshape(words.shape[0], -1)[:, :cols].astype(np.uint8)


# -- GGUF blocks -----------------------------------------------------------------------------------------------------
_GGML_BLOCKS = {"Q8_0": (34, 2), "Q4_0": (18, 2), "Q4_1": (20, 4)}  # bytes per 32-block, header bytes (d[, m])
KBLOCK_TYPES = ("Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")  # repacked by quant_kblocks.py


def from_ggml_blocks(raw: np.ndarray, ggml_type: str, cols: int) -> Packed:
    """GGUF blocks of a type with a scheme (uint8 [N, bytes per row], rows in HF order) -> Packed, values
    unchanged."""
    if ggml_type in KBLOCK_TYPES:
        from .quant_kblocks import from_kblocks
        return from_kblocks(raw, ggml_type, cols)
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
