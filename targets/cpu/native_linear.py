"""cpu lowerings of the linear layers onto the native dequantize-matmul kernel (native/linear.c).

`quant_linear` (every packed scheme with groups of a multiple of 32, K a multiple of 32) and `linear` with a half-precision
weight (q0f16, q0bf16) become one opaque PrimFunc whose body calls `ember_linear`: the weight is dequantized in
registers (decode) or in an L2-sized panel (prefill), never written as a tensor, and no cast kernel runs over the
weights. float32 activations only (the cpu default); anything else keeps the generic lowering (return None).
"""
from __future__ import annotations

import math
from typing import Any

import tvm
from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ..extern_op import extern
from ...ir.ops_quant import QuantFormat

# the format codes of native/linear.c
Q4, Q4_1, Q8, F16, BF16 = 0, 1, 2, 3, 4
HALF_FORMATS = {"float16": F16, "bfloat16": BF16}
OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps leaves the call alone
ATTRS = {"op_pattern": OPAQUE, "tirx.is_scheduled": True}


def quant_format_code(fmt: QuantFormat, cols: int) -> int | None:
    if fmt.group_size % 32 or cols % 32:  # whole 32-blocks; a row's last group may be partial
        return None
    if fmt.bits == 8:
        return Q8
    return Q4_1 if fmt.has_min else Q4


def checked(call: tirx.PrimExpr, message: str) -> tirx.Stmt:
    """`call` (an int32 status), then a runtime error with `message` unless it returned 0."""
    status = tirx.Var("status", "int32")
    return tirx.SeqStmt([tirx.LetStmt(status, call),
                         tirx.AssertStmt(status == 0, tvm.ir.StringImm("RuntimeError"), [tvm.ir.StringImm(message)])])


def _call(fmt_code: int, group: int, rows: int, cols: int, has_bias: bool):
    """te compute of y[..., rows] = x[..., cols] . W^T (+ bias) through ember_linear."""

    def compute(xt: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])

        def body(ins, outs):
            x, pieces = ins[0], list(ins[1:])
            bias = pieces.pop() if has_bias else x
            weight = pieces[0]
            scales = pieces[1] if len(pieces) > 1 else weight
            mins = pieces[2] if len(pieces) > 2 else weight
            m = math.prod(lead) if lead else 1
            call = tirx.call_extern(
                "int32", "ember_linear", x.data, weight.data, scales.data, mins.data, bias.data, outs[0].data,
                tirx.Cast("int64", m), tirx.const(rows, "int64"), tirx.const(cols, "int64"),
                tirx.const(group, "int32"), tirx.const(fmt_code, "int32"), tirx.const(int(has_bias), "int32"))
            return checked(call, "ember_linear: out of memory")

        return extern(lead + [rows], [xt, *tensors], body, dtype="float32", name="ember_linear")

    return compute


def lower_quant_linear(it: Any, node: Any, args: list) -> Any:
    fmt = QuantFormat.from_attrs(node.attrs)
    x = args[0]
    cols = int(node.attrs["in_features"])
    code = quant_format_code(fmt, cols)
    if x.dtype != "float32" or code is None:
        return None
    pieces, bias = list(args[1:1 + fmt.num_pieces]), list(args[1 + fmt.num_pieces:])
    bias = [b if b.dtype == "float32" else b.astype("float32") for b in bias]
    rows = int(pieces[0].shape[0])
    compute = _call(code, fmt.group_size, rows, cols, bool(bias))
    return op.tensor_expr_op(compute, f"{node.attrs['scheme']}_linear_native", [x, *pieces, *bias], attrs=ATTRS)


def lower_linear(it: Any, node: Any, args: list) -> Any:
    x, weight = args[0], args[1]
    code = HALF_FORMATS.get(weight.dtype)
    if x.dtype != "float32" or code is None:
        return None
    bias = [b if b.dtype == "float32" else b.astype("float32") for b in args[2:]]
    rows, cols = int(weight.shape[0]), int(weight.shape[1])
    compute = _call(code, 0, rows, cols, bool(bias))
    return op.tensor_expr_op(compute, f"{weight.dtype}_linear_native", [x, weight, *bias], attrs=ATTRS)


LOWERINGS = {"quant_linear": lower_quant_linear, "linear": lower_linear}
