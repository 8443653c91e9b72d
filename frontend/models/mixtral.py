"""Mixtral (Jiang et al. 2024), as in Mixtral-8x7B / 8x22B: Mistral's decoder (GQA, rope, an optional window) whose
MLP is a sparse mixture of `num_local_experts` SwiGLU experts of `intermediate_size`, each token sent to
`num_experts_per_tok` of them by a router (`block_sparse_moe.gate`): softmax over the top-k router logits (= softmax,
top k, renormalized), the experts' outputs summed with those weights (moe_block.py, ir/ops_moe.py).

Checkpoint names: `block_sparse_moe.experts.{e}.w1 / w3 / w2` (gate, up, down) per expert, stacked by ember into one
parameter each; llama.cpp writes Mixtral as general.architecture "llama" with `llama.expert_count` and the stacked
ffn_gate_exps / ffn_up_exps / ffn_down_exps (q/k rows permuted as for Llama), read back here as model_type mixtral.
Refused by field name: num_experts_per_tok > num_local_experts. `router_jitter_noise` only acts in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...ir.builder import Module, Tensor
from ..config import ModelConfig
from ..config_fields import Fields
from ..layers import RMSNorm
from .base import Architecture
from .llama import Attention, LlamaConfig, LlamaForCausalLM
from .moe_block import SparseMoE


def read_top_k(f: Fields, experts_key: str, experts: int) -> int:
    k = f.positive_int("num_experts_per_tok")
    if k > experts:
        raise f.error("num_experts_per_tok", f"is {k}, more than the {experts} experts of {experts_key}")
    return k


@dataclass
class MixtralConfig(LlamaConfig):
    num_local_experts: int = 8
    num_experts_per_tok: int = 2

    @classmethod
    def read_fields(cls, f: Fields) -> dict[str, Any]:
        fields = super().read_fields(f)
        fields["qkv_bias"] = fields["o_bias"] = False  # Mixtral's attention has no biases (attention_bias unused)
        experts = f.positive_int("num_local_experts")
        fields.update(num_local_experts=experts, num_experts_per_tok=read_top_k(f, "num_local_experts", experts))
        return fields

    # -- moe_block.MoEConfig -------------------------------------------------------------------------------------
    @property
    def num_routed_experts(self) -> int:
        return self.num_local_experts

    @property
    def experts_per_token(self) -> int:
        return self.num_experts_per_tok

    @property
    def expert_intermediate_size(self) -> int:
        return self.intermediate_size

    @property
    def normalize_top_k(self) -> bool:
        return True  # softmax over the top-k logits

    def is_moe_layer(self, layer: int) -> bool:
        return True


class MixtralDecoderLayer(Module):
    def __init__(self, cfg: MixtralConfig, layer: int, dtype: str, attention: type[Attention] = Attention) -> None:
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = attention(cfg, layer, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.block_sparse_moe = SparseMoE(cfg, ("w1", "w3", "w2"), dtype)

    def __call__(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x, name="attn_norm"))
        return x + self.block_sparse_moe(self.post_attention_layernorm(x, name="mlp_norm"))


class MixtralBackbone(Module):
    def __init__(self, cfg: MixtralConfig, dtype: str) -> None:
        from ..layers import Embedding

        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = [MixtralDecoderLayer(cfg, i, dtype) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)


class MixtralForCausalLM(LlamaForCausalLM):
    """Llama's entry points and head over Mixtral's layers."""

    def __init__(self, cfg: ModelConfig, dtype: str = "float32") -> None:
        from ..layers import Linear

        self.model = MixtralBackbone(cfg, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        self.cfg, self.dtype = cfg, dtype


ARCHITECTURE = Architecture(
    name="mixtral",
    model_types=("mixtral",),
    config=MixtralConfig,
    causal_lm=MixtralForCausalLM,
    gguf={},  # read from general.architecture "llama" with llama.expert_count (llama.py's gguf_config)
)
