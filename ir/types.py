"""Tensor types with symbolic dimensions.

A dimension is an int or a symbol name (str): "total_len" is the number of tokens in a prefill batch,
"batch" the number of sequences in a decode step. Symbols are plain names; two dims are equal when
they are the same int or the same name.
"""
from __future__ import annotations

from dataclasses import dataclass

Dim = int | str

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
INT_DTYPES = ("int32", "int8", "uint8", "uint32", "int4", "uint4")
DTYPES = FLOAT_DTYPES + INT_DTYPES

_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "int32": "i32", "int8": "i8",
          "uint8": "u8", "uint32": "u32", "int4": "i4", "uint4": "u4"}


def short_dtype(dtype: str) -> str:
    return _SHORT.get(dtype, dtype)


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        for dim in self.shape:
            if isinstance(dim, bool) or not isinstance(dim, (int, str)):
                raise ValueError(f"bad dimension {dim!r} in shape {self.shape}")
            if isinstance(dim, int) and dim < 0:
                raise ValueError(f"negative dimension in shape {self.shape}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def symbols(self) -> set[str]:
        return {d for d in self.shape if isinstance(d, str)}

    def numel(self) -> int:
        """Number of elements of a fully static shape."""
        total = 1
        for dim in self.shape:
            if isinstance(dim, str):
                raise ValueError(f"shape {self.shape} is symbolic")
            total *= dim
        return total

    def __str__(self) -> str:
        return f"{short_dtype(self.dtype)}[{', '.join(str(d) for d in self.shape)}]"
