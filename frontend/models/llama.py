"""Llama (Touvron et al. 2023), as used by Llama 2/3/3.x, SmolLM2, TinyLlama, Mistral and Qwen2.

Pre-norm decoder: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x)). Attention is grouped-query attention
with rotary position embeddings (optionally llama3 frequency scaling) over a paged KV cache; Mistral adds
a sliding window, Qwen2 a bias on the q/k/v projections. The MLP is SwiGLU: down(silu(gate(x)) * up(x)).
"""
from __future__ import annotations

from ...ir import functional as F
from ...ir.builder import Module, Tensor
from ..config import ModelConfig
from ..layers import Embedding, Linear, RMSNorm


class Attention(Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: str) -> None:
        h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, h * d, bias=cfg.qkv_bias, dtype=dtype)
        self.k_proj = Linear(cfg.hidden_size, kvh * d, bias=cfg.qkv_bias, dtype=dtype)
        self.v_proj = Linear(cfg.hidden_size, kvh * d, bias=cfg.qkv_bias, dtype=dtype)
        self.o_proj = Linear(h * d, cfg.hidden_size, bias=cfg.o_bias, dtype=dtype)
        self.cfg, self.layer = cfg, layer

    def __call__(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        b, s = x.shape[0], x.shape[1]
        h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = self.q_proj(x, name="q").reshape(b, s, h, d)
        k = self.k_proj(x, name="k").reshape(b, s, kvh, d)
        v = self.v_proj(x, name="v").reshape(b, s, kvh, d)
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
    def __init__(self, cfg: ModelConfig, layer: int, dtype: str) -> None:
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = Attention(cfg, layer, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = MLP(cfg, dtype)

    def __call__(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x, name="attn_norm"))
        return x + self.mlp(self.post_attention_layernorm(x, name="mlp_norm"))


class Backbone(Module):
    def __init__(self, cfg: ModelConfig, dtype: str) -> None:
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = [DecoderLayer(cfg, i, dtype) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)


class LlamaForCausalLM(Module):
    """Entry points: `prefill` (a ragged batch of prompt chunks) and `decode` (one token per sequence)."""

    def __init__(self, cfg: ModelConfig, dtype: str = "float32") -> None:
        self.model = Backbone(cfg, dtype)
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
