"""Phi-3 (Abdin et al. 2024), as in Phi-3-mini/medium and Phi-4-mini: Llama's pre-norm decoder with the q/k/v
projections stored as one `qkv_proj` ([q | k | v] rows) and the MLP's gate and up as one `gate_up_proj` ([gate |
up] rows, the MLP is down(silu(gate) * up)). Rope may rotate only the first `partial_rotary_factor` of each head
(Phi-4-mini: 0.75, 96 of 128), and LongRoPE (`rope_scaling.type = longrope`) divides each rotary frequency by a
factor of its own, from `short_factor` or `long_factor`, and multiplies cos and sin by an attention factor.

The fused checkpoint tensors are declared as they are stored, one Linear each, followed by a split. That is the
very graph passes/fuse_linears.py makes from Llama's separate q/k/v and gate/up linears, so everything downstream
applies unchanged: fuse_qkv hands the qkv linear's output to the KV cache as is, fuse_swiglu reads gate_up,
quantization sees one weight (made by materialize.py from one source tensor, with no slicing), and a GGUF file's
attn_qkv and ffn_up (llama.cpp writes the fused tensors as they are, with no q/k permute) map one to one. The
alternative, separate q/k/v parameters whose sources are row ranges of the fused tensor, would need a slicing
source that materialize.py does not have, only for fuse_linears to concatenate the pieces back.

Refused by field name: mlp_bias, attention_bias (the forward has no biases), rope types other than default and
longrope, longrope keys that are not implemented (e.g. Phi-3.5-MoE's short_mscale / long_mscale).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import gguf

from ...errors import ConfigError
from ...ir import functional as F
from ...ir.builder import Module, Tensor
from ..config import ModelConfig, _rope
from ..config_fields import Fields
from ..layers import Embedding, Linear, RMSNorm
from .base import Architecture, GGUFArch
from .llama import LlamaForCausalLM

LONGROPE_KEYS = frozenset({"type", "rope_type", "rope_theta", "partial_rotary_factor", "short_factor",
                           "long_factor", "original_max_position_embeddings", "factor", "attention_factor"})


@dataclass
class Phi3Config(ModelConfig):
    """config.json of `phi3`. `partial_rotary_factor` gives the rotary dims (`rotary_dim`); LongRoPE is kept in
    `rope_scaling` as {rope_type: longrope, short_factor, long_factor (rotary_dim / 2 floats each),
    original_max_position_embeddings, attention_factor}."""

    PARTIAL_ROTARY: ClassVar[bool] = True

    partial_rotary_factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        rotary = self.rotary_dim
        if rotary <= 0 or rotary % 2:
            raise ConfigError(f"ModelConfig: field 'partial_rotary_factor' {self.partial_rotary_factor} gives "
                              f"{rotary} rotary dims of head_dim {self.head_dim}, which must be a positive even number")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)  # transformers' rounding

    @classmethod
    def read_fields(cls, f: Fields) -> dict[str, Any]:
        for key in ("mlp_bias", "attention_bias"):
            if f.boolean(key, False):
                raise f.error(key, "is true: Phi-3 projections have no biases in ember's forward")
        fields = super().read_fields(f)
        fields["partial_rotary_factor"] = cls.read_partial_rotary_factor(f)
        rotary = int(fields["head_dim"] * fields["partial_rotary_factor"])
        if fields["rope_scaling"] is not None:
            fields["rope_scaling"] = _longrope(f, fields["rope_scaling"], rotary, fields["max_position_embeddings"])
        window = fields["sliding_window"]
        if window is not None and window >= fields["max_position_embeddings"]:
            fields["sliding_window"] = None  # Phi-4-mini's 262144 of a 131072 context: no token is ever outside it
        return fields

    @classmethod
    def read_rope(cls, f: Fields) -> tuple[float, dict[str, Any] | None]:
        params = f.section("rope_parameters")
        section = params if params is not None and params.given("rope_theta") else f.section("rope_scaling")
        kind = None if section is None else section.raw.get("type") or section.raw.get("rope_type")
        if kind not in ("longrope", "su"):  # transformers reads Phi-3's old name "su" as longrope
            if kind not in (None, "default"):
                raise ConfigError(f"{f.source}: rope type {kind!r} is not supported for phi3 "
                                  "(supported: default, longrope)")
            return _rope(f)
        theta = section.positive_float("rope_theta") if section is params else f.positive_float("rope_theta", 1e4)
        unknown = sorted(set(section.raw) - LONGROPE_KEYS)
        if unknown:
            raise section.error(unknown[0], "is not implemented for longrope rope scaling")
        return theta, {"rope_type": "longrope", "_section": section}  # finished by _longrope, which knows the dims


def _longrope(f: Fields, partial: dict[str, Any], rotary: int, max_positions: int) -> dict[str, Any]:
    section: Fields = partial["_section"]
    tables = {}
    for key in ("short_factor", "long_factor"):
        values = section.raw.get(key)
        if not isinstance(values, list) or len(values) != rotary // 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in values):
            raise section.error(key, f"must be a list of rotary_dim / 2 = {rotary // 2} positive numbers, got "
                                     f"{values!r}")
        tables[key] = [float(v) for v in values]
    if section.given("original_max_position_embeddings"):
        original = section.positive_int("original_max_position_embeddings")
    else:
        original = f.positive_int("original_max_position_embeddings")
    factor = section.positive_float("factor", max_positions / original)  # transformers' default for Phi-3
    if section.given("attention_factor"):
        attention = section.positive_float("attention_factor")
    else:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {"rope_type": "longrope", **tables, "original_max_position_embeddings": original,
            "attention_factor": float(attention)}


class Phi3Attention(Module):
    def __init__(self, cfg: Phi3Config, layer: int, dtype: str) -> None:
        h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.qkv_proj = Linear(cfg.hidden_size, (h + 2 * kvh) * d, bias=False, dtype=dtype)
        self.o_proj = Linear(h * d, cfg.hidden_size, bias=False, dtype=dtype)
        self.cfg, self.layer = cfg, layer

    def __call__(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        b, s = x.shape[0], x.shape[1]
        h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q, k, v = F.split(self.qkv_proj(x, name="qkv"), [h * d, kvh * d, kvh * d], axis=-1)
        q, k, v = q.reshape(b, s, h, d), k.reshape(b, s, kvh, d), v.reshape(b, s, kvh, d)
        q = F.rope(q, cfg.rope_theta, cfg.rope_scaling, rotary_dim=cfg.rotary_dim, name="q_rot")
        k = F.rope(k, cfg.rope_theta, cfg.rope_scaling, rotary_dim=cfg.rotary_dim, name="k_rot")
        o = F.paged_attention(q, k, v, layer=self.layer, sm_scale=d ** -0.5, sliding_window=cfg.sliding_window,
                              name="attn")
        return self.o_proj(o.reshape(b, s, h * d), name="o")


class Phi3MLP(Module):
    def __init__(self, cfg: Phi3Config, dtype: str) -> None:
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False, dtype=dtype)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False, dtype=dtype)
        self.intermediate = cfg.intermediate_size

    def __call__(self, x: Tensor) -> Tensor:
        gate, up = F.split(self.gate_up_proj(x, name="gate_up"), [self.intermediate, self.intermediate], axis=-1)
        return self.down_proj(F.silu(gate) * up, name="down")


class Phi3DecoderLayer(Module):
    def __init__(self, cfg: Phi3Config, layer: int, dtype: str) -> None:
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = Phi3Attention(cfg, layer, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = Phi3MLP(cfg, dtype)

    def __call__(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x, name="attn_norm"))
        return x + self.mlp(self.post_attention_layernorm(x, name="mlp_norm"))


class Phi3Backbone(Module):
    def __init__(self, cfg: Phi3Config, dtype: str) -> None:
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = [Phi3DecoderLayer(cfg, i, dtype) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)


class Phi3ForCausalLM(LlamaForCausalLM):
    """Llama's entry points (prefill, decode) and head over Phi-3's layers."""

    def __init__(self, cfg: Phi3Config, dtype: str = "float32") -> None:
        self.model = Phi3Backbone(cfg, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        self.cfg, self.dtype = cfg, dtype


ARCHITECTURE = Architecture(
    name="phi3",
    model_types=("phi3",),
    config=Phi3Config,
    causal_lm=Phi3ForCausalLM,
    # llama.cpp's converter writes qkv_proj as attn_qkv and gate_up_proj as ffn_up, unpermuted; partial rotary as
    # rope.dimension_count, LongRoPE as the rope_factors_long/short tensors (importers/gguf.py reads them back)
    gguf={"phi3": GGUFArch("phi3", gguf.MODEL_ARCH.PHI3, partial_rotary=True)},
)
