"""A source tensor stored as quantized blocks (a GGUF Q4_1, Q8_0, Q6_K... tensor), dequantized only on demand.

Providers hand these out instead of float arrays so that a scheme holding the file's type exactly repacks the blocks
(passes/quant_weights.py) and never pays for float values it does not need; every other consumer asks for
`values()` (materialize.floats). `key` names the tensor: equal keys mean the same data, which lets the pieces of
one quantized weight share one packing.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BlockSource"]


@dataclass(frozen=True, eq=False)
class BlockSource:
    ggml_type: str  # e.g. "Q4_1"
    shape: tuple[int, ...]  # of the float values (HF layout)
    read_blocks: Callable[[], np.ndarray] = field(repr=False)  # uint8 [rows, bytes per row], rows in HF order
    read_values: Callable[[], np.ndarray] = field(repr=False)  # float32 of `shape`
    key: Hashable = field(default_factory=object)  # identity of the data (default: this object alone)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def blocks(self) -> np.ndarray:
        return self.read_blocks()

    def values(self) -> np.ndarray:
        """float32 values, dequantized now (not kept: the caller decides what to hold on to)."""
        return self.read_values()

    def flatten_rows(self) -> "BlockSource":
        """A stacked [E, rows, cols] tensor (a GGUF file's experts) as the [E * rows, cols] matrix of its rows."""
        rows = 1
        for d in self.shape[:-1]:
            rows *= d
        return BlockSource(self.ggml_type, (rows, self.shape[-1]),
                           lambda: np.ascontiguousarray(self.blocks()).reshape(rows, -1),
                           lambda: self.values().reshape(rows, self.shape[-1]), key=("flat", self.key))

    @staticmethod
    def concat_rows(parts: Sequence[object]) -> "BlockSource | None":
        """Row concatenation (how fused weights are made) of matrices of one block type, still lazy; None when the
        parts are not all such (the caller concatenates float values instead)."""
        if not parts or not all(isinstance(p, BlockSource) and p.ndim == 2 for p in parts):
            return None
        sources: list[BlockSource] = list(parts)  # type: ignore[arg-type]
        if len({p.ggml_type for p in sources}) != 1 or len({p.shape[1] for p in sources}) != 1:
            return None
        return BlockSource(
            sources[0].ggml_type, (sum(p.shape[0] for p in sources), sources[0].shape[1]),
            lambda: np.concatenate([p.blocks() for p in sources], axis=0),
            lambda: np.concatenate([p.values() for p in sources], axis=0),
            key=("rows", tuple(p.key for p in sources)))
