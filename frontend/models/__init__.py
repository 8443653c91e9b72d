"""Model definitions, one file per architecture, and the entry points every causal LM exports.

Adding an architecture: a file here ending with `ARCHITECTURE = Architecture(...)` (its config class, forward and
GGUF conventions; see base.py), listed in `_FILES`, and a case in tests/e2e/test_hf_parity.py.
"""
from __future__ import annotations

from ...errors import ConfigError, ModelFormatError
from ...ir import graph
from ...ir.builder import trace
from ...ir.types import TensorType
from ..config import ModelConfig
from . import gemma, llama, mixtral, phi3, qwen3, qwen3_moe
from .base import Architecture, GGUFArch
from .moe_block import STACKED, expert_source_names

_FILES = (llama, qwen3, phi3, gemma, mixtral, qwen3_moe)
ARCHITECTURES: tuple[Architecture, ...] = tuple(f.ARCHITECTURE for f in _FILES)
_BY_MODEL_TYPE = {t: a for a in ARCHITECTURES for t in a.model_types}
_BY_GGUF_ARCH = {name: (a, g) for a in ARCHITECTURES for name, g in a.gguf.items()}


def architecture_of(model_type: str, source: str = "config") -> Architecture:
    """The architecture implementing HF `model_type`; `source` names the file in the error."""
    if model_type not in _BY_MODEL_TYPE:
        raise ConfigError(f"{source}: unknown architecture model_type={model_type!r} "
                          f"(supported: {', '.join(sorted(_BY_MODEL_TYPE))})")
    return _BY_MODEL_TYPE[model_type]


def gguf_architecture(name: object, source: str) -> tuple[Architecture, GGUFArch]:
    """The architecture reading GGUF files whose `general.architecture` is `name`."""
    if name not in _BY_GGUF_ARCH:
        raise ModelFormatError(f"{source}: general.architecture: unsupported architecture {name!r} "
                               f"(supported: {', '.join(sorted(_BY_GGUF_ARCH))})")
    return _BY_GGUF_ARCH[name]


def parameter_count(cfg: ModelConfig) -> int:
    return architecture_of(cfg.model_type).parameter_count(cfg)


def entry_points(static_decode: bool = False) -> dict[str, dict[str, TensorType]]:
    """prefill: a ragged batch (tokens of all sequences concatenated); decode: one token per sequence.
    `decode1` is a batch-1 decode with static shapes: GPU GEMV schedules need them, and on cpu the VM then runs a
    step with no shape arithmetic or dynamic allocation (SmolLM2 decode ~20 % faster)."""
    entries = {
        "prefill": {"ids": TensorType((1, "total_len"), "int32"), "logit_pos": TensorType(("num_logits",), "int32")},
        "decode": {"ids": TensorType(("batch", 1), "int32")},
    }
    if static_decode:
        entries["decode1"] = {"ids": TensorType((1, 1), "int32")}
    return entries


def build_module(cfg: ModelConfig, name: str, dtype: str = "float32", static_decode: bool = False) -> graph.Module:
    """Trace the model of `cfg` into an ir.Module with activations (and, before quantization, weights) in `dtype`."""
    model = architecture_of(cfg.model_type).causal_lm(cfg, dtype)
    kv = graph.KVCacheSpec(num_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                           num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, dtype=dtype,
                           sliding_window=cfg.sliding_window, window_layers=cfg.window_layers)
    entries = entry_points(static_decode)
    if static_decode:
        model.decode1 = model.decode
    module = trace(model, entries, name=name, kv_cache=kv,
                   attrs={"vocab_size": cfg.vocab_size, "compute_dtype": dtype})
    for param in module.params.values():  # the checkpoint tensor each parameter is read from
        experts = param.info.get(STACKED)
        if experts:  # E experts' [rows, cols] tensors, concatenated by rows ([E * rows, cols], then reshaped)
            param.info["sources"] = expert_source_names(param.name, experts)
            param.info["stacked_source"] = param.name  # a GGUF file's one tensor (materialize.adopt_stacked_sources)
            param.info["source_shapes"] = [list(param.type.shape[1:])] * experts
        else:
            param.info["sources"] = [param.name]
            param.info["source_shapes"] = [list(param.type.shape)]
    return module
