"""Residual add + RMSNorm as one op with two outputs: the sum (the next residual) and the normed value.

    s = add(a, b);  n = rms_norm(s, @w)  ->  s, n = add_rms_norm(a, b, @w)

The op takes the add's place (the norm weight is a parameter, so it is available there) and keeps both output
values, so every reader of the sum and of the normed value is untouched. Applies only to an add of two
equal-shape tensors (no broadcasting). How the op becomes kernels is the lowering's business
(targets/lower_fused.py): the sum joins the epilogue of the GEMM that produced an addend, the norm is one
fp32 kernel.
"""
from __future__ import annotations

from ..ir.graph import PARAM, Module
from .rewrite import Splice


class FuseAddRMSNorm:
    name = "fuse_add_norm"

    def __call__(self, module: Module) -> Module:
        for function in module.functions.values():
            splice = Splice(function)
            taken: set[int] = set()
            for norm in function.nodes:
                if norm.op != "rms_norm" or norm.inputs[1].kind != PARAM:
                    continue
                add = norm.inputs[0].producer
                if add is None or add.op != "add" or id(add) in taken or add.inputs[0].type != add.inputs[1].type:
                    continue
                taken.add(id(add))  # a sum normed twice fuses with the first norm only
                fused = splice.node("add_rms_norm", [*add.inputs, norm.inputs[1]], dict(norm.attrs),
                                    outputs=[add.outputs[0], norm.outputs[0]])
                splice.replace(add, [fused])
                splice.replace(norm, [])
            splice.apply()
        return module
