"""A GGUF file as a model source: config, weights and tokenizer.

Weights come out as float32 (HF layout). Tensors stored as Q8_0, Q4_0 or Q4_1 come out as `BlockArray`s: the same
float32 values, plus the file's blocks (`ggml_type`, `ggml_blocks`) so that quantized schemes holding that type
repack them instead of requantizing (passes/quant_weights.py). `formats()` tells the Quantize pass each tensor's type.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..source import ModelSource, TokenizerFiles

REPACKABLE_TYPES = ("Q8_0", "Q4_0", "Q4_1")


class BlockArray(np.ndarray):
    """float32 values of a GGUF tensor that also carry its storage blocks (uint8 [rows, bytes per row]).

    Row concatenation (how fused weights are made) concatenates the blocks too when all parts share one type; any
    other derived array is a plain float array without blocks."""

    ggml_type: str | None = None
    ggml_blocks: np.ndarray | None = None

    @classmethod
    def wrap(cls, values: np.ndarray, ggml_type: str, blocks: np.ndarray) -> "BlockArray":
        array = values.view(cls)
        array.ggml_type, array.ggml_blocks = ggml_type, blocks
        return array

    def __array_finalize__(self, obj: Any) -> None:
        self.ggml_type, self.ggml_blocks = None, None  # views and results of numpy ops carry no blocks

    def __array_function__(self, func, types, args, kwargs):
        result = super().__array_function__(func, types, args, kwargs)
        if func is np.concatenate:
            parts, axis = args[0], kwargs.get("axis", args[1] if len(args) > 1 else 0)
            kinds = {getattr(p, "ggml_type", None) for p in parts}
            if axis == 0 and len(kinds) == 1 and None not in kinds and all(p.ndim == 2 for p in parts):
                blocks = np.concatenate([p.ggml_blocks for p in parts], axis=0)
                return BlockArray.wrap(np.asarray(result), kinds.pop(), blocks)
            return np.asarray(result)
        return result


class GGUFWeights:
    def __init__(self, model) -> None:
        self.model = model
        self._by_name = {t.hf_name: t for t in model.tensors()}
        self._last: tuple[str, np.ndarray] | None = None  # the pieces of a quantized weight read it in a row

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> np.ndarray:
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        tensor = self._by_name[name]
        values = tensor.dequantize()
        if tensor.ggml_type.name in REPACKABLE_TYPES:
            values = BlockArray.wrap(values, tensor.ggml_type.name, tensor.raw())
        self._last = (name, values)
        return values

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        """(HF shape, GGUF tensor type) from the tensor infos; reads no tensor data."""
        tensor = self._by_name[name]
        return tensor.shape, tensor.ggml_type.name

    def formats(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """HF name -> (GGUF tensor type, shape)."""
        return {name: (t.ggml_type.name, t.shape) for name, t in self._by_name.items()}

    def origin(self, name: str) -> str:
        tensor = self._by_name.get(name)
        return f"{self.model.path} ({tensor.gguf_name})" if tensor else str(self.model.path)

    def tensor(self, name: str):
        return self._by_name[name]


def gguf_source(path: Path) -> ModelSource:
    from .gguf import open_gguf
    from .gguf_tokenizer import load_gguf_tokenizer, save_tokenizer_files

    model = open_gguf(path)
    config = ModelConfig.from_dict(model.hf_config(), source=str(path))
    info = load_gguf_tokenizer(model)
    tokenizer = TokenizerFiles(write=lambda folder: save_tokenizer_files(info, folder),
                               bos_token_id=info.bos_token_id, eos_token_ids=list(info.eos_token_ids),
                               add_bos_token=info.add_bos_token, chat_template=info.chat_template)
    weights = GGUFWeights(model)
    types = Counter(t.ggml_type.name for t in model.tensors())
    description = f"GGUF {path.name} ({', '.join(f'{n} {k}' for k, n in types.most_common())})"
    return ModelSource(name=path.stem, config=config, weights=weights, tokenizer=tokenizer, description=description)
