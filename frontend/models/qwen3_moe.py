"""Qwen3-MoE, as in Qwen3-30B-A3B and Qwen3-235B-A22B: Qwen3's decoder (q/k RMSNorm per head, head_dim from the
config) whose MLP is, on its sparse layers, `num_experts` SwiGLU experts of `moe_intermediate_size` with
`num_experts_per_tok` chosen per token: softmax over the router's logits, the top k, renormalized when
`norm_topk_prob` (moe_block.py, ir/ops_moe.py). A layer is sparse when it is not in `mlp_only_layers` and
(layer + 1) is a multiple of `decoder_sparse_step` (transformers' rule); the others keep a dense MLP of
`intermediate_size`. No shared experts (those are Qwen2-MoE's).

Checkpoint names: `mlp.gate` (router), `mlp.experts.{e}.gate_proj / up_proj / down_proj` per expert (stacked into
one parameter each); GGUF (`qwen3moe`): ffn_gate_inp and the stacked ffn_*_exps, `expert_feed_forward_length`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import gguf

from ...ir.builder import Module, Tensor
from ..config import ModelConfig
from ..config_fields import Fields
from ..layers import Embedding, Linear, RMSNorm
from .base import Architecture, GGUFArch
from .llama import MLP, LlamaForCausalLM
from .mixtral import read_top_k
from .moe_block import SparseMoE
from .qwen3 import Qwen3Attention, Qwen3Config


@dataclass
class Qwen3MoeConfig(Qwen3Config):
    QWEN_WINDOWS: ClassVar[tuple[str, ...]] = ("qwen3_moe",)

    num_experts: int = 128
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 768
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)

    @classmethod
    def read_fields(cls, f: Fields) -> dict[str, Any]:
        fields = super().read_fields(f)
        # transformers 5 writes num_experts as num_local_experts (its attribute_map); the Hub's configs say num_experts
        key = "num_experts" if f.given("num_experts") else "num_local_experts"
        experts = f.positive_int(key)
        if f.given("num_experts") and f.given("num_local_experts") and f.raw["num_local_experts"] != experts:
            raise f.error("num_local_experts", f"is {f.raw['num_local_experts']!r}, but num_experts is {experts}")
        layers = fields["num_hidden_layers"]
        only = f.raw.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < layers
                                                 for i in only):
            raise f.error("mlp_only_layers", f"must be a list of layer indices below {layers}, got {only!r}")
        fields.update(num_experts=experts, num_experts_per_tok=read_top_k(f, key, experts),
                      moe_intermediate_size=f.positive_int("moe_intermediate_size"),
                      norm_topk_prob=f.boolean("norm_topk_prob", False),  # transformers' default
                      decoder_sparse_step=f.positive_int("decoder_sparse_step", 1),
                      mlp_only_layers=sorted(set(only)))
        return fields

    # -- moe_block.MoEConfig -------------------------------------------------------------------------------------
    @property
    def num_routed_experts(self) -> int:
        return self.num_experts

    @property
    def experts_per_token(self) -> int:
        return self.num_experts_per_tok

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size

    @property
    def normalize_top_k(self) -> bool:
        return self.norm_topk_prob

    def is_moe_layer(self, layer: int) -> bool:
        return layer not in self.mlp_only_layers and (layer + 1) % self.decoder_sparse_step == 0


class Qwen3MoeDecoderLayer(Module):
    def __init__(self, cfg: Qwen3MoeConfig, layer: int, dtype: str) -> None:
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = Qwen3Attention(cfg, layer, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = (SparseMoE(cfg, ("gate_proj", "up_proj", "down_proj"), dtype) if cfg.is_moe_layer(layer)
                    else MLP(cfg, dtype))

    def __call__(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x, name="attn_norm"))
        return x + self.mlp(self.post_attention_layernorm(x, name="mlp_norm"))


class Qwen3MoeBackbone(Module):
    def __init__(self, cfg: Qwen3MoeConfig, dtype: str) -> None:
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = [Qwen3MoeDecoderLayer(cfg, i, dtype) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: ModelConfig, dtype: str = "float32") -> None:
        self.model = Qwen3MoeBackbone(cfg, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        self.cfg, self.dtype = cfg, dtype


def gguf_config(model: Any) -> dict[str, Any]:
    """config.json keys of llama.cpp's qwen3moe metadata: every layer sparse, top k renormalized unless the file says
    `expert_weights_norm` false (llama.cpp's Qwen3-MoE graph renormalizes)."""
    from ..importers.gguf import _positive_int

    key = model._key
    norm = model.metadata.get(key("expert_weights_norm"), True)
    if not isinstance(norm, bool):
        raise model._error(key("expert_weights_norm"), f"expected a bool, found {norm!r}")
    return {"num_experts": _positive_int(model, key("expert_count")),
            "num_experts_per_tok": _positive_int(model, key("expert_used_count")),
            "moe_intermediate_size": _positive_int(model, key("expert_feed_forward_length")),
            "norm_topk_prob": norm, "decoder_sparse_step": 1, "mlp_only_layers": []}


ARCHITECTURE = Architecture(
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    config=Qwen3MoeConfig,
    causal_lm=Qwen3MoeForCausalLM,
    gguf={"qwen3moe": GGUFArch("qwen3_moe", gguf.MODEL_ARCH.QWEN3MOE, extra_config=gguf_config)},
)
