"""What an architecture file declares: its config class, its forward, and how GGUF files of it are named.

An architecture file (frontend/models/<name>.py) ends with one `ARCHITECTURE = Architecture(...)`; the registry in
frontend/models/__init__.py lists the files. Checkpoint names are the forward's own parameter paths (Hugging Face
keys); GGUF names come from gguf-py's TensorNameMap for the file's `general.architecture`, so no name table is kept
here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import gguf

from ...ir.builder import Module, Parameter
from ..config import ModelConfig


@dataclass(frozen=True)
class GGUFArch:
    """One `general.architecture` value: the HF model_type its files become, and llama.cpp's conventions for it."""

    model_type: str
    arch: gguf.MODEL_ARCH
    permuted_qk: bool = False  # llama.cpp's converter permutes q/k rows for its LLaMA rope kernel (llama only)
    partial_rotary: bool = False  # rope.dimension_count < head_dim is read as partial_rotary_factor (else refused)
    norm_offset: float = 0.0  # llama.cpp's converter writes w + norm_offset for RMSNorm weights (Gemma: 1)
    # config.json keys of the architecture's own metadata (GGUFModel -> dict), over the ones every file has
    extra_config: Callable[[Any], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]  # the HF `model_type` values this file implements (variants are config)
    config: type[ModelConfig]
    causal_lm: Callable[[ModelConfig, str], Module]  # (config, dtype) -> the model, parameters named as in HF
    gguf: Mapping[str, GGUFArch] = field(default_factory=dict)  # general.architecture -> how to read the file

    def parameters(self, cfg: ModelConfig) -> dict[str, Parameter]:
        """HF name -> parameter (shape, dtype) of the model of `cfg`; builds the layers, traces nothing."""
        return dict(self.causal_lm(cfg, "float32").named_parameters())

    def parameter_count(self, cfg: ModelConfig) -> int:
        """Elements of the model's weights (a tied embedding counted once, as transformers does)."""
        return sum(math.prod(p.shape) for p in self.parameters(cfg).values())


def gguf_tensor_names(gguf_arch: GGUFArch, hf_names: list[str], num_layers: int) -> dict[str, str]:
    """GGUF name -> HF name for the parameters `hf_names`, through gguf-py's TensorNameMap. A parameter the map does
    not know is an error in the architecture file (its GGUF files could never be read), not in a user's file."""
    name_map = gguf.get_tensor_name_map(gguf_arch.arch, num_layers)
    names = {}
    for hf_name in hf_names:
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise AssertionError(f"gguf-py has no {gguf_arch.arch.name} tensor for parameter {hf_name}")
        names[gguf_name] = hf_name
    return names
