"""Model definitions and the entry points every causal LM exports."""
from __future__ import annotations

from ...ir import graph
from ...ir.builder import trace
from ...ir.types import TensorType
from ..config import ModelConfig
from .llama import LlamaForCausalLM

MODELS = {"llama": LlamaForCausalLM}


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
    model = MODELS[cfg.architecture](cfg, dtype)
    kv = graph.KVCacheSpec(num_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                           num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, dtype=dtype,
                           sliding_window=cfg.sliding_window)
    entries = entry_points(static_decode)
    if static_decode:
        model.decode1 = model.decode
    module = trace(model, entries, name=name, kv_cache=kv,
                   attrs={"vocab_size": cfg.vocab_size, "compute_dtype": dtype})
    for param in module.params.values():  # the checkpoint tensor each parameter is read from
        param.info["sources"] = [param.name]
        param.info["source_shapes"] = [list(param.type.shape)]
    return module
