"""cpu lowerings of SwiGLU and (add +) RMSNorm onto native/elementwise.c (float32 only; None = generic lowering).

The matmuls are opaque native calls, so the residual add that TVM used to fuse into a GEMM epilogue joins the
norm: `add_rms_norm` is one kernel writing both the sum and its normalized form.
"""
from __future__ import annotations

import math
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ..extern_op import extern
from .native_linear import ATTRS, checked

F32 = "float32"


def _rows(shape: list[Any]) -> Any:
    return tirx.Cast("int64", math.prod(shape[:-1]) if len(shape) > 1 else 1)


def lower_swiglu(it: Any, node: Any, args: list) -> Any:
    (x,) = args
    if x.dtype != F32:
        return None
    half = int(x.shape[-1]) // 2

    def compute(xt: te.Tensor) -> te.Tensor:
        shape = list(xt.shape)

        def body(ins, outs):
            call = tirx.call_extern("int32", "ember_swiglu", ins[0].data, outs[0].data, _rows(shape),
                                    tirx.const(half, "int64"))
            return checked(call, "ember_swiglu failed")

        return extern(shape[:-1] + [half], [xt], body, dtype=F32, name="ember_swiglu")

    return op.tensor_expr_op(compute, "swiglu_native", [x], attrs=ATTRS)


def _norm_call(eps: float, with_add: bool):
    def compute(*tensors: te.Tensor):
        shape = list(tensors[0].shape)
        width = tirx.const(int(shape[-1]), "int64")

        def body(ins, outs):
            null = tirx.reinterpret("handle", tirx.const(0, "uint64"))  # the C kernel then normalizes a alone
            a, w = ins[0], ins[-1]
            b_ptr = ins[1].data if with_add else null
            total_ptr = outs[0].data if with_add else null
            call = tirx.call_extern("int32", "ember_rms_norm", a.data, b_ptr, w.data, total_ptr, outs[-1].data,
                                    _rows(shape), width, tirx.const(eps, F32))
            return checked(call, "ember_rms_norm failed")

        outs = [shape, shape] if with_add else [shape]
        return extern(outs, list(tensors), body, dtype=[F32] * len(outs), name="ember_rms_norm")

    return compute


def lower_rms_norm(it: Any, node: Any, args: list) -> Any:
    x, weight = args
    if x.dtype != F32 or weight.dtype != F32:
        return None
    return op.tensor_expr_op(_norm_call(node.attrs["eps"], False), "rms_norm_native", [x, weight], attrs=ATTRS)


def lower_add_rms_norm(it: Any, node: Any, args: list) -> Any:
    a, b, weight = args
    if a.dtype != F32 or b.dtype != F32 or weight.dtype != F32 or list(a.shape) != list(b.shape):
        return None
    total, normed = op.tensor_expr_op(_norm_call(node.attrs["eps"], True), "add_rms_norm_native", [a, b, weight],
                                      attrs=ATTRS)
    return [total, normed]


LOWERINGS = {"swiglu": lower_swiglu, "rms_norm": lower_rms_norm, "add_rms_norm": lower_add_rms_norm}
