"""Quantized-weight operators: a linear layer and an embedding table whose weight is stored packed.

A weight W[N, K] (N output rows, K input features) is stored as a `QuantFormat` says, in these pieces (in order):
  qweight  4-, 5-, 6-bit: uint32[N, ceil(K/8)], nibble i (bits 4i..4i+3) of word j holds the low 4 bits of q at
           k = 8j + i;  2-, 3-bit: uint32[N, ceil(K/16)], bits 2i..2i+1 of word j hold the low 2 bits of q at
           k = 16j + i;  8-bit: int8[N, K], q in -128..127
  qhigh    3-, 5-bit: uint32[N, ceil(K/32)], bit i of word j is the top bit of q (bit 2 or 4) at k = 32j + i
           6-bit only: uint32[N, ceil(K/16)], bits 2i..2i+1 of word j are bits 4-5 of q at k = 16j + i
  scales   float16[N, G] (s), G = ceil(K/group);  with super blocks: the group's integer scale code
           (uint8 when has_min, int8 otherwise)
  mins     (has_min) float16[N, G] (m);  with super blocks: the group's uint8 min code;  2-bit: no such piece,
           the min code is the high nibble of the group's `scales` byte (its scale code the low one), as in GGUF
  super    (super blocks) float16[N, ceil(K/super_block)]: d, the super block's scale
  super_mins (super blocks with has_min) float16[N, ceil(K/super_block)]: dmin
and, with s and m of group k // group,
  plain:        W = s*q + m (has_min), s*(q - 2^(bits-1)) (without min), s*q (8-bit)
  super blocks: s = d*scale_code and m = -(dmin*min_code) (both exact in float32), then the same formulas:
                GGUF's K-quants (Q2_K, Q4_K, Q5_K: has_min; Q3_K, Q6_K: int8 scale codes, q - 4 / q - 32).
2- and 3-bit weights exist only in super blocks (GGUF's Q2_K, Q3_K).
The last group of a row may be partial (K not a multiple of the group): nothing past K is ever read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ops import ShapeError, register
from .types import TensorType, is_float

NIBBLES_PER_WORD = 8
SCALE_DTYPE = "float16"


SUPER_BLOCK = 256  # values of one GGUF K-quant super block


@dataclass(frozen=True)
class QuantFormat:
    bits: int  # 2, 3 (super blocks only), 4, 5, 6 or 8
    group_size: int
    has_min: bool  # W = s*q + m; otherwise symmetric
    super_block: int = 0  # 0, or SUPER_BLOCK: group scales (and mins) are integer codes times a per-block fp16

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 5, 6, 8):
            raise ValueError(f"{self.bits}-bit weights are not supported (2, 3, 4, 5, 6 or 8)")
        if self.bits == 8 and self.has_min:
            raise ValueError("8-bit weights are symmetric (no mins)")
        if self.group_size <= 0 or self.group_size % NIBBLES_PER_WORD:
            raise ValueError(f"group size {self.group_size} must be a positive multiple of {NIBBLES_PER_WORD}")
        if self.super_block not in (0, SUPER_BLOCK):
            raise ValueError(f"super blocks are of {SUPER_BLOCK} values, got {self.super_block}")
        if self.super_block and (self.bits == 8 or self.super_block % self.group_size):
            raise ValueError(f"super blocks need 2-6 bits and groups dividing {SUPER_BLOCK}")
        if self.bits < 4 and not self.super_block:
            raise ValueError(f"{self.bits}-bit weights come only in super blocks (GGUF Q2_K / Q3_K)")

    @property
    def low_bits(self) -> int:
        """The code bits `qweight` holds: 2 (2-, 3-bit), 4 (4-6 bit) or 8; `qhigh` holds the rest."""
        return 8 if self.bits == 8 else (2 if self.bits < 4 else 4)

    @property
    def high_bits(self) -> int:
        return self.bits - self.low_bits if self.bits != 8 else 0

    @property
    def shared_codes(self) -> bool:
        """2-bit (Q2_K): a group's 4-bit scale and min codes share its `scales` byte, which keeps GGUF's 2.625 bits
        per weight (a byte each would make it 3.125)."""
        return self.bits == 2

    @property
    def piece_names(self) -> tuple[str, ...]:
        """The parameter suffixes of a weight in this format, in the order the ops take them."""
        names = ["qweight"] + (["qhigh"] if self.high_bits else []) + ["scales"]
        names += ["mins"] if self.has_min and not self.shared_codes else []
        if self.super_block:
            names += ["super"] + (["super_mins"] if self.has_min else [])
        return tuple(names)

    @property
    def num_pieces(self) -> int:
        """Tensors a weight becomes: qweight, qhigh?, scales, mins?, super?, super_mins?."""
        return len(self.piece_names)

    @property
    def offset(self) -> int:
        """What a symmetric code is centred on (W = s*(q - offset))."""
        return 0 if self.bits == 8 or self.has_min else 1 << (self.bits - 1)

    @property
    def storage_dtype(self) -> str:
        return "int8" if self.bits == 8 else "uint32"

    def weight_type(self, rows: int, cols: int) -> TensorType:
        width = cols if self.bits == 8 else -(-cols * self.low_bits // 32)
        return TensorType((rows, width), self.storage_dtype)

    def scale_type(self, rows: int, cols: int) -> TensorType:
        dtype = SCALE_DTYPE if not self.super_block else ("uint8" if self.has_min else "int8")
        return TensorType((rows, -(-cols // self.group_size)), dtype)

    def piece_types(self, rows: int, cols: int) -> list[TensorType]:
        types = {"qweight": self.weight_type(rows, cols), "scales": self.scale_type(rows, cols),
                 "qhigh": TensorType((rows, -(-cols * self.high_bits // 32)), "uint32"),
                 "super": TensorType((rows, -(-cols // max(self.super_block, 1))), SCALE_DTYPE)}
        types["mins"] = TensorType(types["scales"].shape, "uint8" if self.super_block else SCALE_DTYPE)
        types["super_mins"] = types["super"]
        return [types[name] for name in self.piece_names]

    def attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"bits": self.bits, "group_size": self.group_size, "has_min": self.has_min}
        if self.super_block:
            attrs["super_block"] = self.super_block
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "QuantFormat":
        try:
            return cls(int(attrs["bits"]), int(attrs["group_size"]), bool(attrs["has_min"]),
                       int(attrs.get("super_block", 0)))
        except KeyError as err:
            raise ShapeError(f"quantized op needs attr {err.args[0]}") from None
        except ValueError as err:
            raise ShapeError(str(err)) from None


def _check_pieces(op: str, fmt: QuantFormat, pieces: list[TensorType], cols: Any) -> int:
    """Checks qweight/scales/mins against the format; returns N."""
    if not isinstance(cols, int) or cols <= 0:
        raise ShapeError(f"{op}: in_features must be a positive int, got {cols!r}")
    rows = pieces[0].shape[0] if pieces[0].ndim == 2 else None
    if not isinstance(rows, int):
        raise ShapeError(f"{op}: packed weight must be a static 2-D tensor, got {pieces[0]}")
    expected = fmt.piece_types(rows, cols)
    if pieces != expected:
        got = ", ".join(str(p) for p in pieces)
        raise ShapeError(f"{op}: {fmt.bits}-bit group-{fmt.group_size} weight of {rows}x{cols} must be "
                         f"{', '.join(str(e) for e in expected)}, got {got}")
    return rows


@register("quant_linear", (3, 8), doc="quant_linear(x[..., K], qweight, qhigh?, scales, mins?, super?, super_mins?, "
                                      "bias[N]?) -> x.dtype[..., N]: "
                                      "linear with the weight dequantized inside the kernel, fp32 accumulation; "
                                      "attrs: scheme, bits, group_size, has_min, super_block?, in_features (K)")
def _quant_linear(t, attrs):
    fmt = QuantFormat.from_attrs(attrs)
    x = t[0]
    if not is_float(x.dtype):
        raise ShapeError(f"quant_linear input must be a float tensor, got {x}")
    pieces, rest = t[1:1 + fmt.num_pieces], t[1 + fmt.num_pieces:]
    if len(pieces) < fmt.num_pieces or len(rest) > 1:
        raise ShapeError(f"quant_linear of {fmt.bits}-bit weights with has_min={fmt.has_min} takes x, "
                         f"{fmt.num_pieces} weight tensors and an "
                         f"optional bias, got {len(t)} inputs")
    cols = attrs.get("in_features")
    rows = _check_pieces("quant_linear", fmt, list(pieces), cols)
    if x.shape[-1] != cols:
        raise ShapeError(f"quant_linear: input {x} has K={x.shape[-1]} but the weight has in_features={cols}")
    if rest and rest[0].shape != (rows,):
        raise ShapeError(f"quant_linear: bias {rest[0]} does not match {rows} output features")
    return [TensorType(x.shape[:-1] + (rows,), x.dtype)]


@register("quant_embedding", (3, 7), doc="quant_embedding(ids int[*S], qweight, qhigh?, scales, mins?, super?, "
                                         "super_mins?) -> dtype[*S, H]: "
                                         "rows of a quantized table; attrs: dtype, scheme, bits, group_size, "
                                         "has_min, in_features (H)")
def _quant_embedding(t, attrs):
    fmt = QuantFormat.from_attrs(attrs)
    ids, pieces = t[0], list(t[1:])
    if ids.dtype != "int32":
        raise ShapeError(f"ids must be int32, got {ids}")
    if len(pieces) != fmt.num_pieces:
        raise ShapeError(f"quant_embedding with has_min={fmt.has_min} takes ids and {fmt.num_pieces} weight tensors, "
                         f"got {len(t)} inputs")
    cols = attrs.get("in_features")
    _check_pieces("quant_embedding", fmt, pieces, cols)
    dtype = attrs.get("dtype")
    if not isinstance(dtype, str) or not is_float(dtype):
        raise ShapeError(f"quant_embedding needs a float attr dtype, got {dtype!r}")
    return [TensorType(ids.shape + (cols,), dtype)]
