"""Gemma 2 and Gemma 3 (text), as in gemma-2-2b/9b/27b and gemma-3-1b/4b/12b/27b (the language model).

A pre-norm decoder with a norm after each block as well:
    x = x + post_attention_norm(Attn(input_norm(x)))
    x = x + post_feedforward_norm(MLP(pre_feedforward_norm(x)))
Every RMSNorm scales by (1 + weight): the checkpoints store w, ember stores 1 + w (the `add_one` weight transform;
llama.cpp's GGUF files already hold 1 + w, so the GGUF reader gives back w). Embeddings are multiplied by
sqrt(hidden_size), the MLP is GeGLU with tanh gelu: down(gelu_tanh(gate(x)) * up(x)), and attention scales
scores by query_pre_attn_scalar ** -0.5 (not head_dim ** -0.5). Layers alternate between local ones (a sliding
window, HF convention) and global ones (`layer_types`; Gemma 2: every other layer from the first, Gemma 3: five
local to one global). Gemma 2 soft-caps the attention scores and the final logits (cap * tanh(x / cap)); Gemma 3
normalizes q and k per head (as Qwen3) and gives local layers their own rope base (`rope_local_base_freq`, no
scaling) while global layers use rope_theta with the config's rope scaling (linear in 4b and larger).

The multimodal Gemma 3 (model_type `gemma3`: a vision tower around the text model) is refused by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gguf

from ...ir import functional as F
from ...ir.builder import Module, Parameter, Tensor
from ..config import ModelConfig, _rope
from ..config_fields import Fields
from ..layers import Embedding, Linear
from . import llama
from .base import Architecture, GGUFArch

SLIDING, FULL = "sliding_attention", "full_attention"


def default_layer_types(model_type: str, num_layers: int, pattern: int | None = None) -> list[str]:
    """HF's layer pattern when a config does not list `layer_types`: Gemma 2 alternates from a local first layer;
    Gemma 3 makes every `pattern`-th layer (default 6) global."""
    if model_type == "gemma2":
        return [SLIDING if i % 2 == 0 else FULL for i in range(num_layers)]
    pattern = pattern or 6
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers)]


@dataclass
class GemmaConfig(ModelConfig):
    """config.json of `gemma2` and `gemma3_text` (transformers 4 and 5 spellings)."""

    ACTIVATIONS: ClassVar[tuple[str, ...]] = ("gelu_pytorch_tanh",)

    hidden_act: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True
    query_pre_attn_scalar: float = 256.0  # scores are scaled by its inverse square root
    attn_logit_softcapping: float | None = None  # Gemma 2: cap * tanh(score / cap) inside attention
    final_logit_softcapping: float | None = None  # Gemma 2: the same on the logits
    layer_types: list[str] = field(default_factory=list)  # per layer: "sliding_attention" | "full_attention"
    rope_local_theta: float | None = None  # Gemma 3's rope base of the local layers (None: rope_theta)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layer_types:
            self.layer_types = default_layer_types(self.model_type, self.num_hidden_layers)
        if SLIDING not in self.layer_types:
            self.sliding_window = None  # no local layer: no window anywhere

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "gemma3_text"

    def is_sliding(self, layer: int) -> bool:
        return self.sliding_window is not None and self.layer_types[layer] == SLIDING

    @property
    def window_layers(self) -> tuple[int, ...] | None:
        layers = tuple(i for i in range(self.num_hidden_layers) if self.is_sliding(i))
        return None if self.sliding_window is None or len(layers) == self.num_hidden_layers else layers

    def layer_rope(self, layer: int) -> tuple[float, dict[str, Any] | None]:
        """(theta, scaling) of `layer`: Gemma 3's local layers have their own base and no scaling."""
        if self.layer_types[layer] == SLIDING and self.rope_local_theta is not None:
            return self.rope_local_theta, None
        return self.rope_theta, self.rope_scaling

    @classmethod
    def read_fields(cls, f: Fields) -> dict[str, Any]:
        model_type = f.string("model_type")
        if model_type == "gemma3":
            raise f.error("model_type", "is 'gemma3', the multimodal Gemma 3 (a vision tower around the text model, "
                                        "weights under language_model): ember compiles the text model only; use a "
                                        "'gemma3_text' checkpoint (e.g. google/gemma-3-1b-it) or save the language "
                                        "model with its text_config")
        if f.boolean("use_bidirectional_attention", False):
            raise f.error("use_bidirectional_attention", "is true: bidirectional (embedding) Gemma models are not "
                                                         "causal LMs")
        fields = super().read_fields(f)
        layers = fields["num_hidden_layers"]
        fields["hidden_act"] = f.string("hidden_activation", fields["hidden_act"], choices=cls.ACTIVATIONS)
        fields["tie_word_embeddings"] = f.boolean("tie_word_embeddings", True)
        fields["query_pre_attn_scalar"] = f.positive_float("query_pre_attn_scalar", 256.0)
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            fields[key] = f.positive_float(key, None)
        fields["layer_types"] = cls._layer_types(f, model_type, layers)
        if model_type == "gemma2":
            fields["rope_local_theta"] = None
        else:
            theta, scaling, local = cls._gemma3_rope(f)
            fields.update(rope_theta=theta, rope_scaling=scaling, rope_local_theta=local)
        return fields

    @classmethod
    def read_sliding_window(cls, f: Fields, num_layers: int) -> int | None:
        if not any(k == SLIDING for k in cls._layer_types(f, f.string("model_type"), num_layers)):
            return None  # every layer global
        return f.positive_int("sliding_window", 4096)  # transformers' default for both

    @classmethod
    def _layer_types(cls, f: Fields, model_type: str, num_layers: int) -> list[str]:
        kinds = f.raw.get("layer_types")
        if kinds is None:
            pattern = f.raw.get("sliding_window_pattern", f.raw.get("_sliding_window_pattern"))
            if pattern is not None and (not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1):
                raise f.error("sliding_window_pattern", f"must be a positive integer, got {pattern!r}")
            return default_layer_types(model_type, num_layers, pattern)
        if not isinstance(kinds, list) or len(kinds) != num_layers or not all(k in (SLIDING, FULL) for k in kinds):
            raise f.error("layer_types", f"must list '{FULL}' or '{SLIDING}' for each of the {num_layers} layers, "
                                         f"got {kinds!r}")
        return list(kinds)

    @classmethod
    def _gemma3_rope(cls, f: Fields) -> tuple[float, dict[str, Any] | None, float]:
        """Global (theta, scaling) and the local layers' base: transformers 5 keeps one rope_parameters section per
        layer type, transformers 4 rope_theta + rope_scaling (global) and rope_local_base_freq."""
        params = f.section("rope_parameters")
        if params is not None and (params.given(FULL) or params.given(SLIDING)):
            full = params.section(FULL)
            theta, scaling = _rope(Fields({"rope_parameters": full.raw if full else {"rope_theta": 1e6}}, f.source))
            local = params.section(SLIDING)
            if local is None:
                return theta, scaling, 10000.0
            if (local.raw.get("rope_type") or local.raw.get("type") or "default") != "default":
                raise local.error("rope_type", f"is {local.raw.get('rope_type')!r}: scaled rope on the local layers "
                                               "is not supported")
            return theta, scaling, local.positive_float("rope_theta", 10000.0)
        theta, scaling = _rope(f)
        if not f.given("rope_theta") and params is None:
            theta = 1_000_000.0  # Gemma 3's default global base
        return theta, scaling, f.positive_float("rope_local_base_freq", 10000.0)


class GemmaRMSNorm(Module):
    """RMSNorm scaling by (1 + weight): the stored parameter is 1 + w (the `add_one` transform)."""

    def __init__(self, dim: int, eps: float, dtype: str) -> None:
        self.weight = Parameter((dim,), dtype, transform="add_one")
        self.eps = eps

    def __call__(self, x: Tensor, name: str = "") -> Tensor:
        return F.rms_norm(x, self.weight, self.eps, name=name)


class Attention(Module):
    def __init__(self, cfg: GemmaConfig, layer: int, dtype: str) -> None:
        h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, h * d, bias=cfg.qkv_bias, dtype=dtype)
        self.k_proj = Linear(cfg.hidden_size, kvh * d, bias=cfg.qkv_bias, dtype=dtype)
        self.v_proj = Linear(cfg.hidden_size, kvh * d, bias=cfg.qkv_bias, dtype=dtype)
        self.o_proj = Linear(h * d, cfg.hidden_size, bias=cfg.o_bias, dtype=dtype)
        if cfg.qk_norm:
            self.q_norm = GemmaRMSNorm(d, cfg.rms_norm_eps, dtype)
            self.k_norm = GemmaRMSNorm(d, cfg.rms_norm_eps, dtype)
        self.cfg, self.layer = cfg, layer

    def __call__(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        b, s = x.shape[0], x.shape[1]
        h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = self.q_proj(x, name="q").reshape(b, s, h, d)
        k = self.k_proj(x, name="k").reshape(b, s, kvh, d)
        v = self.v_proj(x, name="v").reshape(b, s, kvh, d)
        if cfg.qk_norm:
            q, k = self.q_norm(q, name="q_norm"), self.k_norm(k, name="k_norm")
        theta, scaling = cfg.layer_rope(self.layer)
        q = F.rope(q, theta, scaling, name="q_rot")
        k = F.rope(k, theta, scaling, name="k_rot")
        o = F.paged_attention(q, k, v, layer=self.layer, sm_scale=cfg.query_pre_attn_scalar ** -0.5,
                              sliding_window=cfg.sliding_window if cfg.is_sliding(self.layer) else None,
                              logit_softcap=cfg.attn_logit_softcapping, name="attn")
        return self.o_proj(o.reshape(b, s, h * d), name="o")


class MLP(llama.MLP):
    """Llama's projections, GeGLU (tanh gelu) instead of SwiGLU."""

    def __call__(self, x: Tensor) -> Tensor:
        gate = F.gelu(self.gate_proj(x, name="gate"), approximate="tanh")
        return self.down_proj(gate * self.up_proj(x, name="up"), name="down")


class DecoderLayer(Module):
    def __init__(self, cfg: GemmaConfig, layer: int, dtype: str) -> None:
        eps = cfg.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(cfg.hidden_size, eps, dtype)
        self.self_attn = Attention(cfg, layer, dtype)
        self.post_attention_layernorm = GemmaRMSNorm(cfg.hidden_size, eps, dtype)
        self.pre_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, eps, dtype)
        self.mlp = MLP(cfg, dtype)
        self.post_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, eps, dtype)

    def __call__(self, x: Tensor) -> Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x, name="attn_norm")),
                                              name="attn_post_norm")
        h = self.mlp(self.pre_feedforward_layernorm(x, name="mlp_norm"))
        return x + self.post_feedforward_layernorm(h, name="mlp_post_norm")


class Backbone(Module):
    def __init__(self, cfg: GemmaConfig, dtype: str) -> None:
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = [DecoderLayer(cfg, i, dtype) for i in range(cfg.num_hidden_layers)]
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)


class GemmaForCausalLM(Module):
    """Entry points: `prefill` (a ragged batch of prompt chunks) and `decode` (one token per sequence)."""

    def __init__(self, cfg: GemmaConfig, dtype: str = "float32") -> None:
        self.model = Backbone(cfg, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        self.cfg, self.dtype = cfg, dtype

    def hidden_states(self, ids: Tensor) -> Tensor:
        x = F.scale(self.model.embed_tokens(ids, self.dtype), math.sqrt(self.cfg.hidden_size), name="embed_scaled")
        for layer in self.model.layers:
            x = layer(x)
        return x

    def logits(self, x: Tensor) -> Tensor:
        x = self.model.norm(x, name="final_norm")
        head = self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        logits = F.linear(x, head, name="logits").astype("float32")
        cap = self.cfg.final_logit_softcapping
        return F.softcap(logits, cap, name="logits_capped") if cap else logits

    def prefill(self, ids: Tensor, logit_pos: Tensor) -> Tensor:
        return self.logits(F.gather_tokens(self.hidden_states(ids), logit_pos, name="last"))

    def decode(self, ids: Tensor) -> Tensor:
        return self.logits(self.hidden_states(ids))


# llama.cpp's Gemma 27B models scale scores by (hidden / heads) ** -0.5, the others by head_dim ** -0.5; GGUF
# files do not store query_pre_attn_scalar, and llama.cpp tells the 27B models by their layer count.
_GGUF_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def gguf_config(model: Any) -> dict[str, Any]:
    """config.json keys from the Gemma metadata of a GGUF file (gguf-py's key names, llama.cpp's defaults): the
    soft-caps, the layer pattern, the local rope base, query_pre_attn_scalar."""
    arch, meta = model.architecture, model.metadata

    def number(key: str, default: Any) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
            raise model._error(f"{arch}.{key}", f"expected a number > 0, found {value!r}")
        return value

    layers, hidden = meta.get(f"{arch}.block_count"), meta.get(f"{arch}.embedding_length")
    heads = meta.get(f"{arch}.attention.head_count")
    head_dim = meta.get(f"{arch}.attention.key_length") or (hidden // heads if hidden and heads else None)
    model_type = model._gguf_arch.model_type
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):  # one flag per layer: true = sliding window
        if len(pattern) != layers or not all(isinstance(p, bool) for p in pattern):
            raise model._error(f"{arch}.attention.sliding_window_pattern", f"expected {layers} booleans")
        kinds = [SLIDING if p else FULL for p in pattern]
    elif pattern is not None and (not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1):
        raise model._error(f"{arch}.attention.sliding_window_pattern", f"expected a positive integer, found {pattern!r}")
    else:
        kinds = default_layer_types(model_type, layers, pattern) if isinstance(layers, int) else None
    config: dict[str, Any] = {
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": float(hidden // heads if layers == _GGUF_27B_LAYERS.get(arch) else head_dim),
        "attn_logit_softcapping": number("attn_logit_softcapping", None),
        "final_logit_softcapping": number("final_logit_softcapping", None),
        "layer_types": kinds,
    }
    if arch == "gemma3":
        config["rope_theta"] = float(number("rope.freq_base", 1_000_000.0))
        config["rope_local_base_freq"] = float(number("rope.freq_base_swa", 10000.0))
    return config


ARCHITECTURE = Architecture(
    name="gemma",
    model_types=("gemma2", "gemma3_text", "gemma3"),  # gemma3 (multimodal) only to refuse it by name
    config=GemmaConfig,
    causal_lm=GemmaForCausalLM,
    # llama.cpp's converter writes 1 + w for every Gemma norm weight (norm_offset)
    gguf={"gemma2": GGUFArch("gemma2", gguf.MODEL_ARCH.GEMMA2, norm_offset=1.0, extra_config=gguf_config),
          "gemma3": GGUFArch("gemma3_text", gguf.MODEL_ARCH.GEMMA3, norm_offset=1.0, extra_config=gguf_config)},
)

