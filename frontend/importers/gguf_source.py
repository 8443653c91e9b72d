"""A GGUF file as a model source: config, weights (dequantized to float32 for q0 schemes) and tokenizer."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..source import ModelSource, TokenizerFiles


class GGUFWeights:
    def __init__(self, model) -> None:
        self.model = model
        self._by_name = {t.hf_name: t for t in model.tensors()}

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> np.ndarray:
        return self._by_name[name].dequantize()

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
