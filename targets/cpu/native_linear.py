"""cpu lowerings of the linear layers onto the native dequantize-matmul kernel (native/linear.c).

`quant_linear` (every packed scheme with groups of a multiple of 32, K a multiple of 32; the 5-/6-bit and K-quant
schemes, Q2_K and Q3_K included, through `ember_linear_k`, with GGUF's own groups) and `linear` with a half-precision
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
Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K = 5, 6, 7, 8, 9, 10, 11  # ember_linear_k
WIDE = {(5, False, 0): Q5_0, (5, True, 0): Q5_1, (4, True, 256): Q4_K, (5, True, 256): Q5_K, (6, False, 256): Q6_K,
        (2, True, 256): Q2_K, (3, False, 256): Q3_K}
GROUPS_OF_16 = (Q6_K, Q2_K, Q3_K)
HALF_FORMATS = {"float16": F16, "bfloat16": BF16}
OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps leaves the call alone
ATTRS = {"op_pattern": OPAQUE, "tirx.is_scheduled": True}


def quant_format_code(fmt: QuantFormat, cols: int) -> int | None:
    if fmt.bits in (5, 6) or fmt.super_block:  # GGUF's own groups only (32; Q2_K, Q3_K, Q6_K: 16 in 256)
        code = WIDE.get((fmt.bits, fmt.has_min, fmt.super_block))
        whole = fmt.group_size == (16 if code in GROUPS_OF_16 else 32) and cols % max(fmt.super_block, 32) == 0
        return code if whole else None
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


def _call_wide(fmt: QuantFormat, fmt_code: int, rows: int, cols: int, has_bias: bool):
    """te compute of y = x . W^T (+ bias) through ember_linear_k (5-/6-bit and super-block formats)."""

    def compute(xt: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])

        def body(ins, outs):
            x, pieces = ins[0], list(ins[1:])
            bias = pieces.pop() if has_bias else x
            named = dict(zip(fmt.piece_names, pieces))
            weight = named["qweight"]
            args = [named.get(k, weight).data for k in ("qweight", "qhigh", "scales", "mins", "super", "super_mins")]
            m = math.prod(lead) if lead else 1
            call = tirx.call_extern(
                "int32", "ember_linear_k", x.data, *args, bias.data, outs[0].data,
                tirx.Cast("int64", m), tirx.const(rows, "int64"), tirx.const(cols, "int64"),
                tirx.const(fmt_code, "int32"), tirx.const(int(has_bias), "int32"))
            return checked(call, "ember_linear_k: out of memory")

        return extern(lead + [rows], [xt, *tensors], body, dtype="float32", name="ember_linear_k")

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
    if code in WIDE.values():
        compute = _call_wide(fmt, code, rows, cols, bool(bias))
    else:
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
