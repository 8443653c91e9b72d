"""The weight side of the Quantize pass: transforms that make a quantized weight's qweight, scales and mins.

The pass (quantize.py) splits a float weight into two or three parameters, each recording
  info["transform"]      "quant_weight" | "quant_scales" | "quant_mins" (registered below with materialize.py)
  info["scheme"]         the scheme name (quant_schemes.SCHEMES)
  info["quantized_from"] the float parameter it replaces
plus the float parameter's sources. The compiler materializes parameters one at a time in manifest order, where the
pieces of one weight are adjacent: the last weight is cached, so it is quantized (or repacked) once, and memory
peaks at about one tensor.

GGUF passthrough: a source array may carry its GGUF storage as two attributes, `ggml_type` (e.g. "Q4_1") and
`ggml_blocks` (uint8 [rows, bytes per row], rows in HF order), as the GGUF importer's arrays do. When that type is
the one the scheme holds exactly, the blocks are repacked (no requantization) instead of quantizing the values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Param
from .materialize import transform
from .quant_schemes import SCHEMES, Packed, from_ggml_blocks, quantize

PIECES = ("quant_weight", "quant_scales", "quant_mins")


@dataclass
class _Last:
    key: tuple[str, str]
    source: np.ndarray
    packed: Packed


_last: _Last | None = None


def packed_weight(array: np.ndarray, param: Param) -> Packed:
    """The quantized form of `array` (the float source of `param`'s weight), computed once per weight."""
    global _last
    scheme = SCHEMES[param.info["scheme"]]
    assert scheme.format is not None, f"{param.name}: {scheme.name} is not a quantized scheme"
    key = (param.info["quantized_from"], scheme.name)
    if _last is not None and _last.key == key and _same(_last.source, array):
        return _last.packed
    blocks = getattr(array, "ggml_blocks", None)
    if blocks is not None and getattr(array, "ggml_type", None) == scheme.ggml_type:
        packed = from_ggml_blocks(blocks, scheme.ggml_type, int(array.shape[1]))
    else:
        packed = quantize(np.asarray(array, dtype=np.float32), scheme.format)
    _last = _Last(key, array, packed)
    return packed


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and np.array_equal(a, b))


@transform("quant_weight")
def _quant_weight(array: np.ndarray, param: Param) -> np.ndarray:
    return packed_weight(array, param).qweight


@transform("quant_scales")
def _quant_scales(array: np.ndarray, param: Param) -> np.ndarray:
    return packed_weight(array, param).scales


@transform("quant_mins")
def _quant_mins(array: np.ndarray, param: Param) -> np.ndarray:
    mins = packed_weight(array, param).mins
    assert mins is not None, f"{param.name}: scheme {param.info['scheme']} has no mins"
    return mins
