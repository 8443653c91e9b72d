"""GGUF Q5_0, Q5_1 and K-quant (Q2_K .. Q6_K) blocks -> ember's planar layout (ir/ops_quant.py), values untouched.

GGUF interleaves everything of a block (fp16 scales, packed 6-bit scale codes, codes in half-block nibble order).
ember stores each kind of data as its own row-major tensor, so that a GPU lane reads 16 bytes of one row's codes
(32 consecutive k) and a warp reads a contiguous run of scale codes:
  qweight     the low 4 bits of every code, pack_nibbles' order (k = 8j + i in nibble i of word j); Q2_K, Q3_K:
              the low 2 bits, pack_high_bits' order (k = 16j + i in bits 2i, 2i+1 of word j)
  qhigh       bit 2 (Q3_K: GGUF's hmask), bit 4 (5-bit) or bits 4-5 (6-bit) of every code, pack_high_bits' order
  scales/mins Q5_0/Q5_1: the fp16 d and m of each 32-block;  K-quants: one integer code per group, unpacked from
              GGUF's 12 bytes of 6-bit codes (Q4_K, Q5_K: uint8 scale and min codes of 8 groups of 32; Q3_K: int8
              scale codes minus 32 of 16 groups of 16) or taken as they are (Q6_K: int8 scale codes of 16 groups
              of 16; Q2_K: GGUF's bytes of 16 groups of 16, scale code | min code << 4, and no mins piece)
  super       K-quants: the super block's fp16 d;  super_mins: Q2_K/Q4_K/Q5_K's fp16 dmin
The value formulas of `quant_schemes.dequantize` then give `gguf.quants.dequantize`'s float32 values bit for bit:
d * code is exact in float32, and ggml's remaining multiply and add round once, as the formula's do.
"""
from __future__ import annotations

import numpy as np

from .quant_schemes import GGML_TO_SCHEME, SCHEMES, Packed, pack_high_bits, pack_nibbles

# bytes per block, values per block
BLOCK_BYTES = {"Q5_0": (22, 32), "Q5_1": (24, 32), "Q2_K": (84, 256), "Q3_K": (110, 256), "Q4_K": (144, 256),
               "Q5_K": (176, 256), "Q6_K": (210, 256)}


def _f16(block_bytes: np.ndarray) -> np.ndarray:
    """uint8 [..., 2] -> float16 [...] (little-endian, as GGUF stores it)."""
    return np.ascontiguousarray(block_bytes).view("<f2")[..., 0].astype(np.float16)


def _nibble_halves(qs: np.ndarray, span: int) -> np.ndarray:
    """uint8 [..., chunks * span] where byte i of a chunk holds value i (low nibble) and value span + i (high) ->
    uint8 codes [..., chunks * 2 * span] in value order."""
    lead = qs.shape[:-1]
    chunks = qs.reshape(*lead, -1, span)
    return np.stack([chunks & np.uint8(15), chunks >> np.uint8(4)], axis=-2).reshape(*lead, -1)


def kquant_scale_codes(packed12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes of 6-bit codes (uint8 [..., 12]) -> (scale codes, min codes), uint8 [..., 8] each.
    Groups 0-3: the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); groups 4-7: the nibbles of bytes 8-11 (low:
    scale, high: min) with the top 2 bits of bytes 0-3 (scale) and 4-7 (min) above them."""
    a, b, c = packed12[..., 0:4], packed12[..., 4:8], packed12[..., 8:12]
    six = np.uint8(63)
    scales = np.concatenate([a & six, (c & np.uint8(15)) | ((a >> np.uint8(6)) << np.uint8(4))], axis=-1)
    mins = np.concatenate([b & six, (c >> np.uint8(4)) | ((b >> np.uint8(6)) << np.uint8(4))], axis=-1)
    return scales, mins


def q3_k_scale_codes(packed12: np.ndarray) -> np.ndarray:
    """Q3_K's 12 bytes of 6-bit codes (uint8 [..., 12]) -> int8 scale codes minus 32 [..., 16]. Group g: the nibble
    g // 8 of byte g % 8 below the 2-bit field g // 4 of byte 8 + g % 4."""
    lead = packed12.shape[:-1]
    low = _bits(packed12[..., 0:8], 2, 4).reshape(*lead, 16)
    high = _bits(packed12[..., 8:12], 4, 2).reshape(*lead, 16)
    return ((low | (high << np.uint8(4))).astype(np.int16) - 32).astype(np.int8)


def _bits(values: np.ndarray, count: int, width: int = 1) -> np.ndarray:
    """uint8 [..., n] -> uint8 [..., count, n]: field j (width bits at bit width*j) of every byte."""
    shifts = (np.arange(count, dtype=np.uint8) * np.uint8(width))[:, None]
    return (values[..., None, :] >> shifts) & np.uint8((1 << width) - 1)


def block_codes(blocks: np.ndarray, ggml_type: str) -> np.ndarray:
    """uint8 [N, B, bytes per block] -> uint8 codes [N, B * values per block] (0 .. 2^bits - 1, value order)."""
    rows = blocks.shape[0]
    if ggml_type in ("Q5_0", "Q5_1"):
        head = 2 if ggml_type == "Q5_0" else 4
        qh = np.ascontiguousarray(blocks[..., head:head + 4]).view("<u4")[..., 0]
        high = ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)).astype(np.uint8)
        low = _nibble_halves(blocks[..., head + 4:], 16)
    elif ggml_type in ("Q2_K", "Q3_K"):
        start = 16 if ggml_type == "Q2_K" else 32
        qs = blocks[..., start:start + 64].reshape(*blocks.shape[:2], 2, 32)  # per 128 values: 2 bits of 32j + i
        low = _bits(qs, 4, 2).reshape(*blocks.shape[:2], -1)
        if ggml_type == "Q2_K":
            return low.reshape(rows, -1)
        # GGUF subtracts 4 where the hmask bit is clear: the code is low | bit << 2, its value q - 4
        high = _bits(blocks[..., 0:32], 8).reshape(*blocks.shape[:2], -1)
        return (low | (high << np.uint8(2))).reshape(rows, -1)
    elif ggml_type == "Q4_K":
        return _nibble_halves(blocks[..., 16:], 32).reshape(rows, -1)
    elif ggml_type == "Q5_K":
        low = _nibble_halves(blocks[..., 48:], 32)
        high = _bits(blocks[..., 16:48], 8).reshape(*blocks.shape[:2], -1)  # bit j of byte i: value 32j + i
    elif ggml_type == "Q6_K":
        low = _nibble_halves(blocks[..., :128], 64)
        qh = blocks[..., 128:192].reshape(*blocks.shape[:2], 2, 32)  # per 128 values: 2 bits of 32j + i
        high = _bits(qh, 4, 2).reshape(*blocks.shape[:2], -1)
    else:
        raise ValueError(f"no K-block layout for GGUF {ggml_type}")
    return (low | (high << np.uint8(4))).reshape(rows, -1)


def from_kblocks(raw: np.ndarray, ggml_type: str, cols: int) -> Packed:
    """GGUF Q5_0 / Q5_1 / Q2_K .. Q6_K blocks (uint8 [N, bytes per row]) -> Packed, values unchanged."""
    if ggml_type not in BLOCK_BYTES:
        raise ValueError(f"no K-block layout for GGUF {ggml_type}")
    size, values = BLOCK_BYTES[ggml_type]
    if cols % values:
        raise ValueError(f"GGUF {ggml_type} rows hold whole blocks of {values} values, got {cols}")
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(rows, cols // values, size)
    codes = block_codes(blocks, ggml_type)
    fmt = SCHEMES[GGML_TO_SCHEME[ggml_type]].format
    low, high = fmt.low_bits, fmt.high_bits
    low_codes = codes & np.uint8((1 << low) - 1)
    qweight = pack_nibbles(low_codes) if low == 4 else pack_high_bits(low_codes, low)
    qhigh = pack_high_bits(codes >> np.uint8(low), high) if high else None
    if ggml_type == "Q2_K":
        scale_min_bytes = np.ascontiguousarray(blocks[..., 0:16]).reshape(rows, -1)  # QuantFormat.shared_codes
        return Packed(qweight, scale_min_bytes, super=_f16(blocks[..., 80:82]), super_mins=_f16(blocks[..., 82:84]))
    if ggml_type == "Q3_K":
        return Packed(qweight, q3_k_scale_codes(blocks[..., 96:108]).reshape(rows, -1), qhigh=qhigh,
                      super=_f16(blocks[..., 108:110]))
    if ggml_type in ("Q5_0", "Q5_1"):
        mins = _f16(blocks[..., 2:4]) if ggml_type == "Q5_1" else None
        return Packed(qweight, _f16(blocks[..., 0:2]), mins, qhigh=qhigh)
    if ggml_type == "Q6_K":
        scales = blocks[..., 192:208].view(np.int8).reshape(rows, -1)
        return Packed(qweight, np.ascontiguousarray(scales), qhigh=qhigh, super=_f16(blocks[..., 208:210]))
    scales, mins = kquant_scale_codes(blocks[..., 4:16])
    return Packed(qweight, scales.reshape(rows, -1), mins.reshape(rows, -1), qhigh=qhigh,
                  super=_f16(blocks[..., 0:2]), super_mins=_f16(blocks[..., 2:4]))
