"""The sparse mixture-of-experts block shared by the MoE architectures (mixtral.py, qwen3_moe.py).

A router `linear` gives E logits per token and one `moe` op (ir/ops_moe.py) does the routing and the experts. The
expert weights are declared stacked ([E, rows, cols], one parameter per projection), named as gguf-py's
TensorNameMap knows the merged tensors (`...experts.w1.weight`, `...experts.gate_proj.weight`); from an HF folder
each is read from the E per-expert checkpoint tensors (`...experts.{e}.w1.weight`, see `expert_source_names`), from
a GGUF file from its one stacked tensor (ffn_gate_exps...). The router is kept float (`keep_float`), as llama.cpp
keeps ffn_gate_inp: quantizing it would move routing decisions.
"""
from __future__ import annotations

from typing import Protocol

from ...ir import functional as F
from ...ir.builder import Module, Parameter, Tensor

STACKED = "stacked_experts"  # Param.info key: the number of experts a stacked weight holds
KEEP_FLOAT = "keep_float"  # Param.info key: never quantized (the router)


class MoEConfig(Protocol):
    hidden_size: int
    rms_norm_eps: float

    @property
    def num_routed_experts(self) -> int: ...

    @property
    def experts_per_token(self) -> int: ...

    @property
    def expert_intermediate_size(self) -> int: ...

    @property
    def normalize_top_k(self) -> bool: ...

    def is_moe_layer(self, layer: int) -> bool: ...


def expert_source_names(name: str, experts: int) -> list[str]:
    """The per-expert HF checkpoint tensors of a stacked weight: `a.experts.w1.weight` -> `a.experts.{e}.w1.weight`."""
    prefix, leaf, suffix = name.rsplit(".", 2)
    return [f"{prefix}.{e}.{leaf}.{suffix}" for e in range(experts)]


class StackedLinear(Module):
    """E linear weights [out, in] stacked into one [E, out, in] parameter."""

    def __init__(self, experts: int, in_features: int, out_features: int, dtype: str) -> None:
        self.weight = Parameter((experts, out_features, in_features), dtype, info={STACKED: experts})


class Router(Module):
    def __init__(self, experts: int, hidden: int, dtype: str) -> None:
        self.weight = Parameter((experts, hidden), dtype, info={KEEP_FLOAT: True})

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, name="router")


class Experts(Module):
    """The expert projections under the checkpoint's names: (gate, up, down) = `names`."""

    def __init__(self, cfg: MoEConfig, names: tuple[str, str, str], dtype: str) -> None:
        e, h, i = cfg.num_routed_experts, cfg.hidden_size, cfg.expert_intermediate_size
        gate, up, down = names
        setattr(self, gate, StackedLinear(e, h, i, dtype))
        setattr(self, up, StackedLinear(e, h, i, dtype))
        setattr(self, down, StackedLinear(e, i, h, dtype))
        self.names = names

    def weights(self) -> tuple[Parameter, Parameter, Parameter]:
        gate, up, down = (getattr(self, n).weight for n in self.names)
        return gate, up, down


class SparseMoE(Module):
    """router (`gate`) + experts, named as the HF checkpoint (Mixtral: w1 / w3 / w2; Qwen: gate_proj / up_proj /
    down_proj)."""

    def __init__(self, cfg: MoEConfig, expert_names: tuple[str, str, str], dtype: str) -> None:
        self.gate = Router(cfg.num_routed_experts, cfg.hidden_size, dtype)
        self.experts = Experts(cfg, expert_names, dtype)
        self.top_k, self.norm = cfg.experts_per_token, cfg.normalize_top_k

    def __call__(self, x: Tensor) -> Tensor:
        gate, up, down = self.experts.weights()
        return F.moe(x, self.gate(x), gate, up, down, top_k=self.top_k, norm_topk_prob=self.norm, name="moe")
