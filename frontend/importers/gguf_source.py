"""A GGUF file as a model source: config, weights and tokenizer.

Float tensors (F32, F16, BF16) come out as float32 arrays (HF layout). Quantized tensors come out as `BlockSource`s:
the file's blocks, dequantized (with gguf-py, in HF row order) only if a consumer needs float values, so that
schemes holding the file's type (Q8_0, Q4_0, Q4_1) repack the blocks without ever dequantizing them
(passes/quant_weights.py). `formats()` tells the Quantize pass each tensor's type.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from ...passes.block_source import BlockSource
from ..config import ModelConfig
from ..source import ModelSource, TokenizerFiles

FLOAT_TYPES = frozenset({GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16})


class GGUFWeights:
    def __init__(self, model) -> None:
        self.model = model
        self._by_name = {t.hf_name: t for t in model.tensors()}

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> np.ndarray | BlockSource:
        tensor = self._by_name[name]
        if tensor.ggml_type in FLOAT_TYPES:
            return tensor.dequantize()  # F32: a view into the memory map
        return BlockSource(tensor.ggml_type.name, tensor.shape, tensor.raw, tensor.dequantize, key=(self, name))

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
