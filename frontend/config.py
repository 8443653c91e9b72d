"""Model configuration: Hugging Face config.json keys, typed.

Configs written by transformers 4 (`rope_theta`, `rope_scaling`) and 5 (`rope_parameters`) both load.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..errors import ConfigError
from .config_fields import Fields

SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear", "yarn")


@dataclass
class ModelConfig:
    """The fields every decoder ember compiles has. Each architecture file (frontend/models/) subclasses it with its
    own fields and rules (`read_fields`), and `from_dict` picks the class by `model_type`."""

    ACTIVATIONS: ClassVar[tuple[str, ...]] = ("silu", "swish")  # the MLP's activation(s) the forward implements
    PARTIAL_ROTARY: ClassVar[bool] = False  # the forward rotates only partial_rotary_factor of each head (Phi-3)

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
        def fail(key: str, problem: str) -> ConfigError:
            return ConfigError(f"ModelConfig: field '{key}' {problem}")

        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise fail(key, f"must be a positive integer, got {value!r}")
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or _derived_head_dim(self.hidden_size, self.num_attention_heads, fail)
        _check_relations(self.num_attention_heads, self.num_key_value_heads, self.head_dim, self.sliding_window, fail)

    @property
    def window_layers(self) -> tuple[int, ...] | None:
        """The layers `sliding_window` applies to; None: every layer (architectures with global layers override it)."""
        return None

    @property
    def architecture(self) -> str:
        """The architecture file implementing this config (frontend/models/<architecture>.py)."""
        from .models import architecture_of

        return architecture_of(self.model_type).name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "ModelConfig":
        """Read a config.json dict (transformers 4 or 5 style); `source` names the file in errors. Every field ember
        uses is checked by type and range, and against the others (heads divide, head_dim even...); fields whose
        values the architecture does not implement are refused by name."""
        from .models import architecture_of

        f = Fields(raw, source)
        config_class = architecture_of(f.string("model_type"), source).config
        return config_class(**config_class.read_fields(f))

    @classmethod
    def from_manifest(cls, fields: dict[str, Any]) -> "ModelConfig":
        """The config an artifact's manifest recorded (`to_dict`), as its architecture's class."""
        from .models import architecture_of

        return architecture_of(fields["model_type"], "manifest").config(**fields)

    @classmethod
    def read_fields(cls, f: Fields) -> dict[str, Any]:
        """This class's constructor arguments from config.json; architectures extend it."""
        model_type = f.string("model_type")
        sizes = {key: f.positive_int(key) for key in
                 ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
        heads = sizes["num_attention_heads"]
        head_dim = f.positive_int("head_dim", 0) or _derived_head_dim(sizes["hidden_size"], heads, f.error)
        kv_heads = f.positive_int("num_key_value_heads", heads)
        window = cls.read_sliding_window(f, sizes["num_hidden_layers"])
        _check_relations(heads, kv_heads, head_dim, window, f.error)
        theta, scaling = cls.read_rope(f)
        partial = cls.read_partial_rotary_factor(f)
        if partial != 1.0 and not cls.PARTIAL_ROTARY:
            raise f.error("partial_rotary_factor", f"is {partial}: partial rotary embeddings are not implemented "
                                                   f"for model_type {model_type!r}")
        bias = f.boolean("attention_bias", False)
        return dict(
            model_type=model_type,
            **sizes,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=f.positive_float("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=f.positive_int("max_position_embeddings", 2048),
            tie_word_embeddings=f.boolean("tie_word_embeddings", False),
            qkv_bias=bias,
            o_bias=bias,
            sliding_window=window,
            hidden_act=f.string("hidden_act", cls.ACTIVATIONS[0], choices=cls.ACTIVATIONS),
            bos_token_id=f.token_id("bos_token_id"),
            eos_token_id=f.token_ids("eos_token_id"),
        )

    @classmethod
    def read_rope(cls, f: Fields) -> tuple[float, dict[str, Any] | None]:
        """(rope_theta, rope_scaling) from config.json; architectures with other rope types extend it."""
        return _rope(f)

    @classmethod
    def read_partial_rotary_factor(cls, f: Fields) -> float:
        """`partial_rotary_factor` (top level, or in transformers 5's `rope_parameters`), 1.0 when absent."""
        params = f.section("rope_parameters")
        if params is not None and params.given("partial_rotary_factor"):
            value = params.positive_float("partial_rotary_factor")
        else:
            value = f.positive_float("partial_rotary_factor", 1.0)
        if value > 1.0:
            raise f.error("partial_rotary_factor", f"must be in (0, 1], got {value}")
        return value

    @classmethod
    def read_sliding_window(cls, f: Fields, num_layers: int) -> int | None:
        """One window for every layer: `sliding_window`, unless transformers 5's `layer_types` says otherwise (every
        layer "full_attention": no window; a mix of full and sliding layers is refused: ember's kernels take one
        window per model)."""
        window = f.positive_int("sliding_window", None)
        kinds = f.raw.get("layer_types")
        if kinds is None:
            return window
        if not isinstance(kinds, list) or len(kinds) != num_layers or \
                not all(k in ("full_attention", "sliding_attention") for k in kinds):
            raise f.error("layer_types", f"must list 'full_attention' or 'sliding_attention' for each of the "
                                         f"{num_layers} layers, got {kinds!r}")
        if all(k == "full_attention" for k in kinds):
            return None
        if all(k == "sliding_attention" for k in kinds):
            return window
        raise f.error("layer_types", "mixes full and sliding-window layers, which ember does not support yet "
                                     "(one window for every layer)")

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


def _derived_head_dim(hidden: int, heads: int, fail: Callable[[str, str], ConfigError]) -> int:
    if hidden % heads:
        raise fail("num_attention_heads", f"{heads} does not divide hidden_size {hidden} (and there is no head_dim)")
    return hidden // heads


def _check_relations(heads: int, kv_heads: int, head_dim: int, window: int | None,
                     fail: Callable[[str, str], ConfigError]) -> None:
    """What no single field shows: the fields against each other."""
    if not isinstance(kv_heads, int) or kv_heads <= 0 or heads % kv_heads:
        raise fail("num_key_value_heads", f"must be a positive integer dividing num_attention_heads {heads}, "
                                          f"got {kv_heads!r}")
    if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise fail("head_dim", f"must be a positive even integer (rotary embeddings rotate pairs), got {head_dim!r}")
    if window is not None and (not isinstance(window, int) or window < 2):
        raise fail("sliding_window", f"must be an integer of at least 2 tokens, got {window!r}")


def _rope(f: Fields) -> tuple[float, dict[str, Any] | None]:
    params = f.section("rope_parameters")  # transformers 5
    if params is not None and params.given("rope_theta"):
        theta = params.positive_float("rope_theta")
        section = params
    else:
        theta = f.positive_float("rope_theta", 10000.0)
        section = f.section("rope_scaling")
    if section is None:
        return theta, None
    rope_type = section.raw.get("type") or section.raw.get("rope_type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"{f.source}: rope type {rope_type!r} is not supported "
                          f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    if rope_type == "default":
        return theta, None
    scaling = {k: v for k, v in section.raw.items() if k not in ("rope_theta", "type")}
    scaling["rope_type"] = rope_type
    if rope_type == "linear":  # positions divided by `factor` (Gemma 3 4b+ global layers)
        if not section.given("factor"):
            raise ConfigError(f"{f.source}: linear rope scaling is missing field 'factor'")
        return theta, {"rope_type": "linear", "factor": section.positive_float("factor")}
    if rope_type == "yarn":
        return theta, _yarn(f, section)
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if not section.given(key):
            raise ConfigError(f"{f.source}: llama3 rope scaling is missing field {key!r}")
    scaling["factor"] = section.positive_float("factor")
    low, high = section.positive_float("low_freq_factor"), section.positive_float("high_freq_factor")
    if high <= low:
        raise section.error("high_freq_factor", f"must exceed low_freq_factor {low}, got {high}")
    scaling["low_freq_factor"], scaling["high_freq_factor"] = low, high
    scaling["original_max_position_embeddings"] = section.positive_int("original_max_position_embeddings")
    return theta, scaling


def _yarn(f: Fields, section: Fields) -> dict[str, Any]:
    """YaRN (Qwen3's long-context configs), with transformers' defaults: `factor` defaults to max_position_embeddings
    / original_max_position_embeddings, beta_fast 32, beta_slow 1, truncate true, and the cos/sin scale
    (`attention_factor`) 0.1 ln(factor) + 1, or the ratio of two such terms when mscale and mscale_all_dim are given."""
    original = section.positive_int("original_max_position_embeddings", None)
    if original is None:
        raise ConfigError(f"{f.source}: yarn rope scaling is missing field 'original_max_position_embeddings'")
    factor = section.positive_float("factor", None) or f.positive_int("max_position_embeddings", 2048) / original
    attention = section.positive_float("attention_factor", None)
    if attention is None:
        mscale, mscale_all = section.positive_float("mscale", None), section.positive_float("mscale_all_dim", None)

        def term(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention = term(factor, mscale) / term(factor, mscale_all) if mscale and mscale_all else term(factor)
    return {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": original,
            "beta_fast": section.positive_float("beta_fast", 32.0), "beta_slow": section.positive_float("beta_slow", 1.0),
            "truncate": section.boolean("truncate", True), "attention_factor": float(attention)}
