"""The weight side of the Quantize pass: transforms that make a quantized weight's qweight, scales and mins.

The pass (quantize.py) splits a float weight into its pieces (QuantFormat.piece_names), each recording
  info["transform"]      "quant_weight" | "quant_qhigh" | "quant_scales" | "quant_mins" | "quant_super" |
                         "quant_super_mins" (PIECES, registered below with materialize.py)
  info["scheme"]         the scheme name (quant_schemes.SCHEMES)
  info["quantized_from"] the float parameter it replaces
plus the float parameter's sources. The compiler materializes parameters one at a time in manifest order, where the
pieces of one weight are adjacent: the last weight is cached, so it is quantized (or repacked) once, and memory
peaks at about one tensor.

GGUF passthrough: a source may be a `BlockSource` (block_source.py: a GGUF tensor's blocks, uint8 [rows, bytes per
row] in HF order, as the GGUF importer hands them out). When its type is the one the scheme holds exactly, the blocks
are repacked (no requantization, and no float values are ever made) instead of quantizing the values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Param
from .block_source import BlockSource
from .materialize import Source, floats, transform
from .quant_schemes import SCHEMES, Packed, from_ggml_blocks, quantize

# transform of each piece (ir/ops_quant.py names them)
PIECES = {"qweight": "quant_weight", "qhigh": "quant_qhigh", "scales": "quant_scales", "mins": "quant_mins",
          "super": "quant_super", "super_mins": "quant_super_mins"}


@dataclass
class _Last:
    key: tuple[str, str]
    source: Source
    packed: Packed


_last: _Last | None = None


def packed_weight(source: Source, param: Param) -> Packed:
    """The quantized form of `source` (the source of `param`'s weight), computed once per weight."""
    global _last
    scheme = SCHEMES[param.info["scheme"]]
    assert scheme.format is not None, f"{param.name}: {scheme.name} is not a quantized scheme"
    key = (param.info["quantized_from"], scheme.name)
    if _last is not None and _last.key == key and _same(_last.source, source):
        return _last.packed
    if isinstance(source, BlockSource) and source.ggml_type == scheme.ggml_type and scheme.ggml_type is not None:
        packed = from_ggml_blocks(source.blocks(), scheme.ggml_type, int(source.shape[1]))
    else:
        packed = quantize(np.asarray(floats(source), dtype=np.float32), scheme.format)
    _last = _Last(key, source, packed)
    return packed


def _same(a: Source, b: Source) -> bool:
    if isinstance(a, BlockSource) or isinstance(b, BlockSource):  # never compare values: that would dequantize
        return isinstance(a, BlockSource) and isinstance(b, BlockSource) and a.key == b.key
    return a is b or (a.shape == b.shape and np.array_equal(a, b))


def _piece_transform(piece: str) -> None:
    def make(source: Source, param: Param) -> np.ndarray:
        return packed_weight(source, param).piece(piece)

    transform(PIECES[piece])(make)


for _piece in PIECES:
    _piece_transform(_piece)
