"""cpu lowering of the mixture-of-experts ops (ir/ops_moe.py) onto ember_moe (native/moe.c).

`moe` (float32 / float16 / bfloat16 expert weights) and `quant_moe` (every packed scheme with 32-multiple groups,
H and I multiples of 32) with float32 activations become one opaque PrimFunc calling `ember_moe`: routing, the
per-expert gather and one dequantize-matmul per expert and projection, all in the compiled library.
"""
from __future__ import annotations

import math
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ...ir.ops_quant import QuantFormat
from ..extern_op import extern
from .native_linear import ATTRS, HALF_FORMATS, checked, quant_format_code

F32 = 5  # native/moe.c's float32 weights


def _compute(code: int, group: int, pieces_per_weight: int, top_k: int, norm: bool):
    def compute(xt: te.Tensor, logits: te.Tensor, *weights: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])
        hidden = int(xt.shape[-1])

        def body(ins, outs):
            x, lg, packed = ins[0], ins[1], list(ins[2:])
            per = [packed[i * pieces_per_weight:(i + 1) * pieces_per_weight] for i in range(3)]
            experts, inter = int(packed[0].shape[0]), int(packed[0].shape[1])
            args = []
            for w in per:
                args += [w[0].data, (w[1] if len(w) > 1 else w[0]).data, (w[2] if len(w) > 2 else w[0]).data]
            tokens = math.prod(lead) if lead else 1
            call = tirx.call_extern(
                "int32", "ember_moe", x.data, lg.data, *args, outs[0].data, tirx.Cast("int64", tokens),
                tirx.const(experts, "int64"), tirx.const(hidden, "int64"), tirx.const(inter, "int64"),
                tirx.const(top_k, "int32"), tirx.const(int(norm), "int32"), tirx.const(group, "int32"),
                tirx.const(code, "int32"), tirx.const(int(pieces_per_weight > 1), "int32"),
                tirx.const(int(pieces_per_weight > 2), "int32"))
            return checked(call, "ember_moe: out of memory")

        return extern(lead + [hidden], [xt, logits, *weights], body, dtype="float32", name="ember_moe")

    return compute


def lower_moe(it: Any, node: Any, args: list) -> Any:
    x, logits, weights = args[0], args[1], list(args[2:])
    dtype = weights[0].dtype
    code = F32 if dtype == "float32" else HALF_FORMATS.get(dtype)
    if x.dtype != "float32" or code is None or len({w.dtype for w in weights}) != 1:
        return None
    logits = logits if logits.dtype == "float32" else logits.astype("float32")
    compute = _compute(code, 0, 1, node.attrs["top_k"], node.attrs["norm_topk_prob"])
    return op.tensor_expr_op(compute, f"{dtype}_moe_native", [x, logits, *weights], attrs=ATTRS)


def lower_quant_moe(it: Any, node: Any, args: list) -> Any:
    fmt = QuantFormat.from_attrs(node.attrs)
    x, logits, pieces = args[0], args[1], list(args[2:])
    hidden, inter = int(node.attrs["hidden"]), int(node.attrs["intermediate"])
    code = quant_format_code(fmt, hidden)
    if x.dtype != "float32" or code is None or quant_format_code(fmt, inter) is None:
        return None
    logits = logits if logits.dtype == "float32" else logits.astype("float32")
    compute = _compute(code, fmt.group_size, fmt.num_pieces, node.attrs["top_k"], node.attrs["norm_topk_prob"])
    return op.tensor_expr_op(compute, f"{node.attrs['scheme']}_moe_native", [x, logits, *pieces], attrs=ATTRS)


LOWERINGS = {"moe": lower_moe, "quant_moe": lower_quant_moe}
