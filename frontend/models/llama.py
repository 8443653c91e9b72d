"""Llama (Touvron et al. 2023), as used by Llama 2/3/3.x, SmolLM2, TinyLlama, Mistral and Qwen2.

Pre-norm decoder: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x)). Attention is grouped-query attention
with rotary position embeddings (optionally llama3 frequency scaling) over a paged KV cache; Mistral adds
a sliding window, Qwen2 a bias on the q/k/v projections. The MLP is SwiGLU: down(silu(gate(x)) * up(x)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gguf

from ...ir import functional as F
from ...ir.builder import Module, Tensor
from ..config import ModelConfig
from ..config_fields import Fields
from ..layers import Embedding, Linear, RMSNorm
from .base import Architecture, GGUFArch


@dataclass
class LlamaConfig(ModelConfig):
    """config.json of `llama`, `mistral` (a window) and `qwen2` (q/k/v bias, a window only when asked for)."""

    # model types whose transformers 4 configs turn the window on with use_sliding_window / max_window_layers
    QWEN_WINDOWS: ClassVar[tuple[str, ...]] = ("qwen2",)

    @classmethod
    def read_fields(cls, f: Fields) -> dict[str, Any]:
        if f.boolean("mlp_bias", False):
            raise f.error("mlp_bias", "is true: biases on the MLP projections are not implemented")
        fields = super().read_fields(f)
        if fields["model_type"] == "qwen2":  # Qwen2 always has q/k/v biases and never an o_proj bias
            fields["qkv_bias"], fields["o_bias"] = True, False
        return fields

    @classmethod
    def read_sliding_window(cls, f: Fields, num_layers: int) -> int | None:
        if f.string("model_type") not in cls.QWEN_WINDOWS or f.raw.get("layer_types") is not None:
            return super().read_sliding_window(f, num_layers)
        # transformers 4 Qwen2 configs: layers from `max_window_layers` on use the window, when it is on
        if not f.boolean("use_sliding_window", False):
            return None
        first = f.raw.get("max_window_layers", 0)
        if not isinstance(first, int) or isinstance(first, bool) or first < 0:
            raise f.error("max_window_layers", f"must be an integer >= 0, got {first!r}")
        if first >= num_layers:
            return None
        if first > 0:
            raise f.error("max_window_layers", f"is {first}: full layers below it and windowed layers above, "
                                               "which ember does not support yet (one window for every layer)")
        return f.positive_int("sliding_window", None)


class Attention(Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: str) -> None:
        h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, h * d, bias=cfg.qkv_bias, dtype=dtype)
        self.k_proj = Linear(cfg.hidden_size, kvh * d, bias=cfg.qkv_bias, dtype=dtype)
        self.v_proj = Linear(cfg.hidden_size, kvh * d, bias=cfg.qkv_bias, dtype=dtype)
        self.o_proj = Linear(h * d, cfg.hidden_size, bias=cfg.o_bias, dtype=dtype)
        self.cfg, self.layer = cfg, layer

    def head_norms(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head normalization of q and k before rope: none in Llama (Qwen3 overrides it)."""
        return q, k

    def __call__(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        b, s = x.shape[0], x.shape[1]
        h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = self.q_proj(x, name="q").reshape(b, s, h, d)
        k = self.k_proj(x, name="k").reshape(b, s, kvh, d)
        v = self.v_proj(x, name="v").reshape(b, s, kvh, d)
        q, k = self.head_norms(q, k)
        q = F.rope(q, cfg.rope_theta, cfg.rope_scaling, name="q_rot")
        k = F.rope(k, cfg.rope_theta, cfg.rope_scaling, name="k_rot")
        o = F.paged_attention(q, k, v, layer=self.layer, sm_scale=d ** -0.5,
                              sliding_window=cfg.sliding_window, name="attn")
        return self.o_proj(o.reshape(b, s, h * d), name="o")


class MLP(Module):
    def __init__(self, cfg: ModelConfig, dtype: str) -> None:
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False, dtype=dtype)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False, dtype=dtype)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False, dtype=dtype)

    def __call__(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x, name="gate")) * self.up_proj(x, name="up"), name="down")


class DecoderLayer(Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: str, attention: type[Attention] = Attention) -> None:
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = attention(cfg, layer, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = MLP(cfg, dtype)

    def __call__(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x, name="attn_norm"))
        return x + self.mlp(self.post_attention_layernorm(x, name="mlp_norm"))


class Backbone(Module):
    def __init__(self, cfg: ModelConfig, dtype: str, attention: type[Attention]) -> None:
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = [DecoderLayer(cfg, i, dtype, attention) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)


class LlamaForCausalLM(Module):
    """Entry points: `prefill` (a ragged batch of prompt chunks) and `decode` (one token per sequence)."""

    ATTENTION: ClassVar[type[Attention]] = Attention

    def __init__(self, cfg: ModelConfig, dtype: str = "float32") -> None:
        self.model = Backbone(cfg, dtype, self.ATTENTION)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        self.cfg, self.dtype = cfg, dtype

    def hidden_states(self, ids: Tensor) -> Tensor:
        x = self.model.embed_tokens(ids, self.dtype)
        for layer in self.model.layers:
            x = layer(x)
        return x

    def logits(self, x: Tensor) -> Tensor:
        x = self.model.norm(x, name="final_norm")
        head = self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        return F.linear(x, head, name="logits").astype("float32")

    def prefill(self, ids: Tensor, logit_pos: Tensor) -> Tensor:
        return self.logits(F.gather_tokens(self.hidden_states(ids), logit_pos, name="last"))

    def decode(self, ids: Tensor) -> Tensor:
        return self.logits(self.hidden_states(ids))


def gguf_config(model: Any) -> dict[str, Any]:
    """llama.cpp writes Mixtral as "llama" with experts: `llama.expert_count` > 0 makes the file model_type mixtral."""
    from ..importers.gguf import _positive_int

    key = model._key
    if not model.metadata.get(key("expert_count")):
        return {}
    return {"model_type": "mixtral", "num_local_experts": _positive_int(model, key("expert_count")),
            "num_experts_per_tok": _positive_int(model, key("expert_used_count"))}


ARCHITECTURE = Architecture(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    config=LlamaConfig,
    causal_lm=LlamaForCausalLM,
    # llama.cpp writes Mistral's files as "llama" (a window in llama.attention.sliding_window)
    gguf={"llama": GGUFArch("llama", gguf.MODEL_ARCH.LLAMA, permuted_qk=True, extra_config=gguf_config),
          "qwen2": GGUFArch("qwen2", gguf.MODEL_ARCH.QWEN2)},
)
