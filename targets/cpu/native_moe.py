"""cpu lowering of the mixture-of-experts ops (ir/ops_moe.py) onto ember_moe (native/moe.c).

`moe` (float32 / float16 / bfloat16 expert weights) and `quant_moe` (every packed format ember_linear or
ember_linear_k takes: the 4-/8-bit group schemes with 32-multiple groups and the GGUF formats kept native, Q5_0 ..
Q6_K; each of gate, up and down in its own) with float32 activations become one opaque PrimFunc calling
`ember_moe`: routing, the per-expert gather and one dequantize-matmul per expert and projection, all in the
compiled library.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ...ir.ops_moe import moe_formats
from ...ir.ops_quant import QuantFormat
from ..extern_op import extern
from .native_linear import ATTRS, HALF_FORMATS, checked, quant_format_code

F32 = 12  # native/moe.c's float32 weights
PIECES = ("qweight", "qhigh", "scales", "mins", "super", "super_mins")  # native/moe.c's order
ITEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "uint32": 4, "int8": 1, "uint8": 1, "uint16": 2}


@dataclass(frozen=True)
class _Weight:
    code: int  # native/moe.c's format
    group: int
    names: tuple[str, ...]  # its pieces, in input order


def _weight_args(weight: _Weight, tensors: list) -> list:
    """ember_moe's 14 arguments of one weight: 6 piece pointers, 6 strides per expert (bytes), format, group."""
    named = dict(zip(weight.names, tensors))
    first = tensors[0]
    pointers, strides = [], []
    for name in PIECES:
        t = named.get(name)
        pointers.append((t if t is not None else first).data)
        per_expert = 0 if t is None else math.prod(int(d) for d in t.shape[1:]) * ITEM_BYTES[t.dtype]
        strides.append(tirx.const(per_expert, "int64"))
    return [*pointers, *strides, tirx.const(weight.code, "int32"), tirx.const(weight.group, "int32")]


def _compute(weights: tuple[_Weight, _Weight, _Weight], top_k: int, norm: bool):
    def compute(xt: te.Tensor, logits: te.Tensor, *packed: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])
        hidden = int(xt.shape[-1])

        def body(ins, outs):
            x, lg, rest = ins[0], ins[1], list(ins[2:])
            experts, inter = int(rest[0].shape[0]), int(rest[0].shape[1])
            args = []
            for weight in weights:
                args += _weight_args(weight, rest[:len(weight.names)])
                rest = rest[len(weight.names):]
            tokens = math.prod(lead) if lead else 1
            call = tirx.call_extern(
                "int32", "ember_moe", x.data, lg.data, *args, outs[0].data, tirx.Cast("int64", tokens),
                tirx.const(experts, "int64"), tirx.const(hidden, "int64"), tirx.const(inter, "int64"),
                tirx.const(top_k, "int32"), tirx.const(int(norm), "int32"))
            return checked(call, "ember_moe: out of memory")

        return extern(lead + [hidden], [xt, logits, *packed], body, dtype="float32", name="ember_moe")

    return compute


def lower_moe(it: Any, node: Any, args: list) -> Any:
    x, logits, weights = args[0], args[1], list(args[2:])
    dtype = weights[0].dtype
    code = F32 if dtype == "float32" else HALF_FORMATS.get(dtype)
    if x.dtype != "float32" or code is None or len({w.dtype for w in weights}) != 1:
        return None
    logits = logits if logits.dtype == "float32" else logits.astype("float32")
    plain = _Weight(code, 0, ("qweight",))
    compute = _compute((plain, plain, plain), node.attrs["top_k"], node.attrs["norm_topk_prob"])
    return op.tensor_expr_op(compute, f"{dtype}_moe_native", [x, logits, *weights], attrs=ATTRS)


def _packed(fmt: QuantFormat, cols: int) -> _Weight | None:
    code = quant_format_code(fmt, cols)
    return None if code is None else _Weight(code, fmt.group_size, fmt.piece_names)


def lower_quant_moe(it: Any, node: Any, args: list) -> Any:
    x, logits, pieces = args[0], args[1], list(args[2:])
    hidden, inter = int(node.attrs["hidden"]), int(node.attrs["intermediate"])
    gate, up, down = moe_formats(node.attrs)
    weights = (_packed(gate, hidden), _packed(up, hidden), _packed(down, inter))
    if x.dtype != "float32" or any(w is None for w in weights):
        return None
    logits = logits if logits.dtype == "float32" else logits.astype("float32")
    compute = _compute(weights, node.attrs["top_k"], node.attrs["norm_topk_prob"])  # type: ignore[arg-type]
    name = node.attrs["scheme"].replace("+", "_")
    return op.tensor_expr_op(compute, f"{name}_moe_native", [x, logits, *pieces], attrs=ATTRS)


LOWERINGS = {"moe": lower_moe, "quant_moe": lower_quant_moe}
