"""Qwen3 (dense), as in Qwen3-0.6B ... Qwen3-32B: Llama's decoder with an RMSNorm over each head of q and k
(`q_norm`, `k_norm`, weights of head_dim) between the projections and rope, no q/k/v bias, head_dim given by the
config (128 with a hidden size of 4096 in Qwen3-8B, so not hidden / heads).

YaRN rope scaling (Qwen3's long-context configs) is refused by the shared rope reader until the rope kernels
implement it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import gguf

from ...ir.builder import Tensor
from ..config import ModelConfig
from ..layers import RMSNorm
from .base import Architecture, GGUFArch
from .llama import Attention, LlamaConfig, LlamaForCausalLM


@dataclass
class Qwen3Config(LlamaConfig):
    QWEN_WINDOWS: ClassVar[tuple[str, ...]] = ("qwen3",)


class Qwen3Attention(Attention):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: str) -> None:
        super().__init__(cfg, layer, dtype)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype)

    def head_norms(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.q_norm(q, name="q_norm"), self.k_norm(k, name="k_norm")


class Qwen3ForCausalLM(LlamaForCausalLM):
    ATTENTION = Qwen3Attention


ARCHITECTURE = Architecture(
    name="qwen3",
    model_types=("qwen3",),
    config=Qwen3Config,
    causal_lm=Qwen3ForCausalLM,
    gguf={"qwen3": GGUFArch("qwen3", gguf.MODEL_ARCH.QWEN3)},
)
