"""Model configuration: Hugging Face config.json keys, typed.

Configs written by transformers 4 (`rope_theta`, `rope_scaling`) and 5 (`rope_parameters`) both load.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# model_type -> architecture definition that implements it
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "llama"}
SUPPORTED_ROPE_TYPES = ("default", "llama3")


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int = 0  # 0: same as num_attention_heads
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3", "factor": ..., ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    sliding_window: int | None = None  # HF convention: a token sees itself and sliding_window - 1 before it
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.num_key_value_heads:
            self.num_key_value_heads = self.num_attention_heads
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads {self.num_key_value_heads}")

    @property
    def architecture(self) -> str:
        return ARCHITECTURES[self.model_type]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "ModelConfig":
        """Read a config.json dict (transformers 4 or 5 style); `source` names the file in errors."""
        model_type = raw.get("model_type")
        if model_type is None:
            raise ConfigError(f"{source}: missing field 'model_type'")
        if model_type not in ARCHITECTURES:
            raise ConfigError(f"{source}: unknown architecture model_type={model_type!r} "
                              f"(supported: {', '.join(sorted(ARCHITECTURES))})")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if raw.get(key) is None:
                raise ConfigError(f"{source}: missing field {key!r}")
        theta, scaling = _rope(raw, source)
        eos = raw.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        return cls(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            num_key_value_heads=int(raw.get("num_key_value_heads") or 0),
            head_dim=int(raw.get("head_dim") or 0),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=bool(raw.get("attention_bias", False)) or model_type == "qwen2",
            o_bias=bool(raw.get("attention_bias", False)) and model_type != "qwen2",
            sliding_window=_sliding_window(raw),
            hidden_act=raw.get("hidden_act", "silu"),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=eos_ids,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(raw, source=str(path))


def _rope(raw: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    params = raw.get("rope_parameters")  # transformers 5
    if isinstance(params, dict) and "rope_theta" in params:
        theta = float(params["rope_theta"])
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(raw.get("rope_theta", 10000.0))
        scaling = dict(raw.get("rope_scaling") or {})
    rope_type = scaling.pop("type", None) or scaling.get("rope_type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"{source}: rope type {rope_type!r} is not supported "
                          f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    if rope_type == "default":
        return theta, None
    scaling["rope_type"] = rope_type
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if key not in scaling:
            raise ConfigError(f"{source}: llama3 rope scaling is missing field {key!r}")
    return theta, scaling


def _sliding_window(raw: dict[str, Any]) -> int | None:
    window = raw.get("sliding_window")
    if raw.get("model_type") == "qwen2" and not raw.get("use_sliding_window", False):
        return None
    return int(window) if window else None
