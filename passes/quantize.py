"""Quantize: choose the storage format of the weights (`--quant`).

Schemes name the weight format only; the compute dtype is the module's activation dtype:
  q0f32  float32 weights
  q0f16  float16 weights
  q0bf16 bfloat16 weights
Ops that read weights (embedding, linear, norms) accept any float weight dtype and compute in the
activation dtype, so for the q0 schemes this pass only retypes the float parameters.
"""
from __future__ import annotations

from ..ir.graph import PARAM, Module
from ..ir.types import TensorType, is_float

SCHEMES = {"q0f32": "float32", "q0f16": "float16", "q0bf16": "bfloat16"}


class Quantize:
    name = "quantize"

    def __init__(self, scheme: str) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"--quant {scheme!r} is not a known scheme (known: {', '.join(SCHEMES)})")
        self.scheme = scheme

    def __call__(self, module: Module) -> Module:
        dtype = SCHEMES[self.scheme]
        for param in module.params.values():
            if is_float(param.type.dtype):
                param.type = TensorType(param.type.shape, dtype)
                param.info["scheme"] = self.scheme
        for _, node in module.iter_nodes():
            for value in node.inputs:
                if value.kind == PARAM:
                    value.type = module.params[value.name].type
        module.attrs["quantization"] = self.scheme
        return module
