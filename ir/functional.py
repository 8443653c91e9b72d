"""One function per operator, for model code: `from ember.ir import functional as F`."""
from __future__ import annotations

from typing import Any

from .builder import Parameter, Tensor, emit

Operand = Tensor | Parameter


def embedding(ids: Tensor, weight: Operand, dtype: str, name: str = "") -> Tensor:
    return emit("embedding", [ids, weight], name=name, dtype=dtype)


def linear(x: Tensor, weight: Operand, bias: Operand | None = None, name: str = "") -> Tensor:
    return emit("linear", [x, weight] + ([bias] if bias is not None else []), name=name)


def matmul(a: Tensor, b: Tensor, name: str = "") -> Tensor:
    return emit("matmul", [a, b], name=name)


def rms_norm(x: Tensor, weight: Operand, eps: float, name: str = "") -> Tensor:
    return emit("rms_norm", [x, weight], name=name, eps=float(eps))


def layer_norm(x: Tensor, weight: Operand, bias: Operand, eps: float, name: str = "") -> Tensor:
    return emit("layer_norm", [x, weight, bias], name=name, eps=float(eps))


def rope(x: Tensor, theta: float, scaling: dict[str, Any] | None = None, rotary_dim: int | None = None,
         name: str = "") -> Tensor:
    return emit("rope", [x], name=name, theta=float(theta), scaling=dict(scaling) if scaling else None,
                rotary_dim=int(rotary_dim or x.shape[-1]))


def paged_attention(q: Tensor, k: Tensor, v: Tensor, layer: int, sm_scale: float,
                    sliding_window: int | None = None, logit_softcap: float | None = None, name: str = "") -> Tensor:
    extra = {"logit_softcap": float(logit_softcap)} if logit_softcap else {}  # Gemma 2: cap * tanh(score / cap)
    return emit("paged_attention", [q, k, v], name=name, layer=int(layer), sm_scale=float(sm_scale),
                sliding_window=sliding_window, **extra)


def silu(x: Tensor, name: str = "") -> Tensor:
    return emit("silu", [x], name=name)


def gelu(x: Tensor, approximate: str = "none", name: str = "") -> Tensor:
    return emit("gelu", [x], name=name, approximate=approximate)


def scale(x: Tensor, factor: float, name: str = "") -> Tensor:
    return emit("scale", [x], name=name, factor=float(factor))


def softcap(x: Tensor, cap: float, name: str = "") -> Tensor:
    return emit("softcap", [x], name=name, cap=float(cap))


def softmax(x: Tensor, axis: int = -1, name: str = "") -> Tensor:
    return emit("softmax", [x], name=name, axis=axis)


def split(x: Tensor, sizes: list[int], axis: int, name: str = "") -> tuple[Tensor, ...]:
    out = emit("split", [x], name=name, sizes=tuple(sizes), axis=axis)
    return out if isinstance(out, tuple) else (out,)


def concat(xs: list[Tensor], axis: int, name: str = "") -> Tensor:
    return emit("concat", list(xs), name=name, axis=axis)


def gather_tokens(x: Tensor, positions: Tensor, name: str = "") -> Tensor:
    return emit("gather_tokens", [x, positions], name=name)


def moe(x: Tensor, logits: Tensor, gate: Operand, up: Operand, down: Operand, top_k: int, norm_topk_prob: bool,
        name: str = "") -> Tensor:
    """Top-k routed SwiGLU experts (ir/ops_moe.py): `logits` are the router's, the weights stacked per expert."""
    return emit("moe", [x, logits, gate, up, down], name=name, top_k=int(top_k), norm_topk_prob=bool(norm_topk_prob))
