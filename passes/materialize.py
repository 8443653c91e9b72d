"""Fill an IR parameter from source tensors: the weight side of the passes.

Passes describe how each parameter is made from the checkpoint in `Param.info`; importers stay one-to-one:
  info["sources"]       source tensor names (default: the parameter's own name)
  info["source_shapes"] their expected shapes (recorded when the model is traced; checked here)
  info["concat_axis"]   axis to concatenate several sources on (horizontal fusion), default 0
  info["transform"]     name of a registered transform applied last (e.g. quantization packing), default a
                        plain cast to the parameter dtype
  info["stacked_experts"] E: the parameter stacks E experts' matrices on a leading axis (MoE). Its sources are
                        the E per-expert tensors (HF folders) or, where the provider has it, the one stacked tensor
                        info["stacked_source"] (GGUF: `adopt_stacked_sources`); either way the transforms see one
                        [E * rows, cols] matrix and the result is reshaped to the parameter's [E, ...]
Transforms register with `@transform("name")` and receive (source, param) -> array of the param's shape and
dtype, where the source is a float array or a `BlockSource` (quantized blocks, dequantized only by `floats()`).
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from ..errors import ModelFormatError
from ..ir.graph import Module, Param
from .block_source import BlockSource
from .quant_schemes import GGML_TO_SCHEME

Source = np.ndarray | BlockSource
Transform = Callable[[Source, Param], np.ndarray]
TRANSFORMS: dict[str, Transform] = {}


# Source tensor types a parameter can be made from: safetensors floats, and the GGUF types ember converts.
SOURCE_DTYPES = frozenset({"F64", "F32", "F16", "BF16"}) | frozenset(GGML_TO_SCHEME)


class Provider(Protocol):
    def names(self) -> list[str]: ...

    def get(self, name: str) -> Source:
        """The tensor: a float array, or a BlockSource for quantized storage (read lazily)."""
        ...

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        """(shape, stored type: "F32", "BF16", "Q4_1"...) from the file's header, reading no tensor data."""
        ...

    def origin(self, name: str) -> str: ...


def transform(name: str) -> Callable[[Transform], Transform]:
    def wrap(fn: Transform) -> Transform:
        TRANSFORMS[name] = fn
        return fn

    return wrap


def sources_of(param: Param) -> list[str]:
    return list(param.info.get("sources", [param.name]))


def check_sources(module: Module, provider: Provider) -> None:
    """Every source tensor of every parameter is present, of a type ember converts, and of the shape the config
    implies, from the headers alone: run before the kernels are built, so a bad checkpoint fails in seconds."""
    available = set(provider.names())
    needed: dict[str, tuple[int, ...] | None] = {}
    for param in module.params.values():
        shapes = param.info.get("source_shapes") or [None] * len(sources_of(param))
        for name, shape in zip(sources_of(param), shapes):
            needed.setdefault(name, None if shape is None else tuple(int(d) for d in shape))
    missing = [name for name in needed if name not in available]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFormatError(f"{provider.origin(missing[0])}: tensor {missing[0]!r} is missing{more}; "
                               "the model's config needs it")
    for name, want in needed.items():
        shape, dtype = provider.header(name)
        if dtype not in SOURCE_DTYPES:
            raise ModelFormatError(f"{provider.origin(name)}: tensor {name!r} is stored as {dtype}, which ember "
                                   f"cannot convert (supported: {', '.join(sorted(SOURCE_DTYPES))})")
        if want is not None and tuple(shape) != want:
            raise ModelFormatError(f"{provider.origin(name)}: tensor {name!r} has shape {list(shape)}, "
                                   f"the config implies {list(want)}")


STACKED, STACKED_SOURCE = "stacked_experts", "stacked_source"


def adopt_stacked_sources(module: Module, provider: Provider) -> None:
    """Read each stacked expert weight from the provider's stacked tensor when it has one (a GGUF file's
    ffn_*_exps), instead of the per-expert tensors of an HF checkpoint."""
    available = set(provider.names())
    for param in module.params.values():
        stacked = param.info.get(STACKED_SOURCE)
        if stacked is not None and stacked in available:
            param.info["sources"] = [stacked]
            param.info["source_shapes"] = [[param.info[STACKED], *param.info["source_shapes"][0]]]


def _flat_rows(source: Source) -> Source:
    """A stacked [E, rows, cols] source as the [E * rows, cols] matrix it is."""
    if source.ndim == 2:
        return source
    if isinstance(source, BlockSource):
        return source.flatten_rows()
    return source.reshape(-1, source.shape[-1])


Shard = tuple[int, int]  # (rank, shards) of a tensor-parallel build (passes/shard_tensor_parallel.py)


def shard_slice(array: Source, axis: int, shard: Shard, name: str) -> np.ndarray:
    """Rank r's 1/N of a source tensor on `axis` (each source of a fused weight is cut on its own)."""
    rank, shards = shard
    if isinstance(array, BlockSource):
        raise ModelFormatError(f"tensor {name!r}: tensor parallelism does not cut quantized GGUF blocks yet "
                               "(compile a float checkpoint)")
    size = array.shape[axis] // shards
    return np.take(array, np.arange(rank * size, (rank + 1) * size), axis=axis)


def load_sources(param: Param, provider: Provider, shard: Shard | None = None) -> Source:
    """The source tensor of `param` (concatenated if fused), shape-checked against the config, cut to `shard`'s
    slice when the parameter is split. Row-fused quantized tensors of one type stay a (lazy) BlockSource; anything
    else fused is concatenated as float32."""
    names = sources_of(param)
    expected = param.info.get("source_shapes") or [None] * len(names)
    axis = param.info.get("shard_axis") if shard is not None and shard[1] > 1 else None
    arrays = []
    for name, shape in zip(names, expected):
        array = provider.get(name)
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise ModelFormatError(f"{provider.origin(name)}: tensor {name!r} has shape {list(array.shape)}, "
                                   f"the config implies {list(shape)}")
        arrays.append(array if axis is None else shard_slice(array, axis, shard, name))
    if STACKED in param.info:
        arrays = [_flat_rows(a) for a in arrays]
    if len(arrays) == 1:
        return arrays[0]
    axis = param.info.get("concat_axis", 0)
    fused = BlockSource.concat_rows(arrays) if axis == 0 else None
    if fused is not None:
        return fused
    return np.concatenate([_to_float32(floats(a)) for a in arrays], axis=axis)


def floats(source: Source) -> np.ndarray:
    """The source's values as an array (dequantizing a BlockSource)."""
    return source.values() if isinstance(source, BlockSource) else source


def materialize(param: Param, provider: Provider, shard: Shard | None = None) -> np.ndarray:
    """The array to store for `param` (on `shard`, in a tensor-parallel build): sources loaded, fused, then
    transformed (or cast)."""
    if "shard_value" in param.info:  # made, not read: the first vocabulary row the shard holds
        rank = shard[0] if shard is not None else 0
        return np.array([rank * int(param.info["shard_value"]["rows"])], dtype=np.int32)
    source = load_sources(param, provider, shard)
    name = param.info.get("transform")
    if name is not None:
        out = TRANSFORMS[name](source, param)
    else:
        out = cast(floats(source), param.type.dtype)
    expected = tuple(int(d) for d in param.type.shape)
    if STACKED in param.info and out.ndim == 2 and out.size == np.prod(expected):
        out = out.reshape(expected)  # [E * rows, ...] -> [E, rows, ...]
    if tuple(out.shape) != expected or str(out.dtype) != param.type.dtype:
        raise AssertionError(f"materialize {param.name}: made {out.dtype}{list(out.shape)}, "
                             f"expected {param.type.dtype}{list(expected)}")
    return np.ascontiguousarray(out)


def _to_float32(array: np.ndarray) -> np.ndarray:
    return array if array.dtype == np.float32 else array.astype(np.float32)


@transform("add_one")
def _add_one(source: Source, param: Param) -> np.ndarray:
    """1 + w, in float32 before the cast (Gemma's RMSNorm scales by 1 + weight)."""
    return cast(_to_float32(floats(source)) + np.float32(1.0), param.type.dtype)


def cast(array: np.ndarray, dtype: str) -> np.ndarray:
    if str(array.dtype) == dtype:
        return array
    if dtype == "bfloat16":
        import ml_dtypes

        return _to_float32(array).astype(ml_dtypes.bfloat16)
    return _to_float32(array).astype(dtype) if str(array.dtype) == "bfloat16" else array.astype(dtype)
