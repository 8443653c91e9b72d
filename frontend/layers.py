"""Layers shared by the model definitions; parameter names follow Hugging Face checkpoints."""
from __future__ import annotations

from ..ir import functional as F
from ..ir.builder import Module, Parameter, Tensor


class Linear(Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: str) -> None:
        self.weight = Parameter((out_features, in_features), dtype)
        if bias:
            self.bias = Parameter((out_features,), dtype)

    def __call__(self, x: Tensor, name: str = "") -> Tensor:
        return F.linear(x, self.weight, getattr(self, "bias", None), name=name)


class Embedding(Module):
    def __init__(self, num: int, dim: int, dtype: str) -> None:
        self.weight = Parameter((num, dim), dtype)

    def __call__(self, ids: Tensor, dtype: str) -> Tensor:
        return F.embedding(ids, self.weight, dtype=dtype, name="embed")


class RMSNorm(Module):
    def __init__(self, dim: int, eps: float, dtype: str) -> None:
        self.weight = Parameter((dim,), dtype)
        self.eps = eps

    def __call__(self, x: Tensor, name: str = "") -> Tensor:
        return F.rms_norm(x, self.weight, self.eps, name=name)
