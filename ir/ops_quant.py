"""Quantized-weight operators: a linear layer and an embedding table whose weight is stored packed.

A weight W[N, K] (N output rows, K input features) is stored as a `QuantFormat` says:
  qweight  4-bit: uint32[N, ceil(K/8)], nibble i (bits 4i..4i+3) of word j holds q at k = 8j + i, q in 0..15
           8-bit: int8[N, K], q in -128..127
  scales   float16[N, ceil(K/group)]   (s)
  mins     float16[N, ceil(K/group)]   (m, only when has_min)
and W[n, k] = s*q + m (has_min), s*(q - 8) (4-bit without min), s*q (8-bit), with s, m of group k // group.
The last group of a row may be partial (K not a multiple of the group): nothing past K is ever read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ops import ShapeError, register
from .types import TensorType, is_float

NIBBLES_PER_WORD = 8
SCALE_DTYPE = "float16"


@dataclass(frozen=True)
class QuantFormat:
    bits: int  # 4 or 8
    group_size: int
    has_min: bool  # W = s*q + m; otherwise symmetric

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"{self.bits}-bit weights are not supported (4 or 8)")
        if self.bits == 8 and self.has_min:
            raise ValueError("8-bit weights are symmetric (no mins)")
        if self.group_size <= 0 or self.group_size % NIBBLES_PER_WORD:
            raise ValueError(f"group size {self.group_size} must be a positive multiple of {NIBBLES_PER_WORD}")

    @property
    def num_pieces(self) -> int:
        """Tensors a weight becomes: qweight, scales (+ mins)."""
        return 3 if self.has_min else 2

    @property
    def storage_dtype(self) -> str:
        return "uint32" if self.bits == 4 else "int8"

    def weight_type(self, rows: int, cols: int) -> TensorType:
        width = -(-cols // NIBBLES_PER_WORD) if self.bits == 4 else cols
        return TensorType((rows, width), self.storage_dtype)

    def scale_type(self, rows: int, cols: int) -> TensorType:
        return TensorType((rows, -(-cols // self.group_size)), SCALE_DTYPE)

    def piece_types(self, rows: int, cols: int) -> list[TensorType]:
        return [self.weight_type(rows, cols)] + [self.scale_type(rows, cols)] * (self.num_pieces - 1)

    def attrs(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "has_min": self.has_min}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "QuantFormat":
        try:
            return cls(int(attrs["bits"]), int(attrs["group_size"]), bool(attrs["has_min"]))
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


@register("quant_linear", (3, 5), doc="quant_linear(x[..., K], qweight, scales, mins?, bias[N]?) -> x.dtype[..., N]: "
                                      "linear with the weight dequantized inside the kernel, fp32 accumulation; "
                                      "attrs: scheme, bits, group_size, has_min, in_features (K)")
def _quant_linear(t, attrs):
    fmt = QuantFormat.from_attrs(attrs)
    x = t[0]
    if not is_float(x.dtype):
        raise ShapeError(f"quant_linear input must be a float tensor, got {x}")
    pieces, rest = t[1:1 + fmt.num_pieces], t[1 + fmt.num_pieces:]
    if len(pieces) < fmt.num_pieces or len(rest) > 1:
        raise ShapeError(f"quant_linear with has_min={fmt.has_min} takes x, {fmt.num_pieces} weight tensors and an "
                         f"optional bias, got {len(t)} inputs")
    cols = attrs.get("in_features")
    rows = _check_pieces("quant_linear", fmt, list(pieces), cols)
    if x.shape[-1] != cols:
        raise ShapeError(f"quant_linear: input {x} has K={x.shape[-1]} but the weight has in_features={cols}")
    if rest and rest[0].shape != (rows,):
        raise ShapeError(f"quant_linear: bias {rest[0]} does not match {rows} output features")
    return [TensorType(x.shape[:-1] + (rows,), x.dtype)]


@register("quant_embedding", (3, 4), doc="quant_embedding(ids int[*S], qweight, scales, mins?) -> dtype[*S, H]: "
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
