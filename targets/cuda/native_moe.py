"""cuda lowering of the mixture-of-experts ops (ir/ops_moe.py) onto kernels/moe.cuh.

`moe` with fp16/bf16 expert weights and `quant_moe` (q4f16, q4f16_1, q4f16g128, q8f16: groups of a multiple of 32)
with fp16 or bf16 activations, H and I multiples of 32, at most 1024 experts, become one opaque PrimFunc of three
launches (route, gate_up, down: see moe.cuh) for every entry point (decode1, decode, prefill). The routing (expert
ids and weights) and the SwiGLU activations live in scratch outputs of the PrimFunc on the device, so nothing is
read back by the host. Everything else returns None (the generic lowering refuses it in one line).
EMBER_CUDA_MOE=0 turns the override off (then a MoE model does not build for cuda: there is no other kernel).
"""
from __future__ import annotations

import math
import os
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ...ir.ops_quant import QuantFormat
from ..extern_op import extern
from .extern_kernel import ATTRS, launch

ENV = "EMBER_CUDA_MOE"
Q4, Q4_1, Q8, F16, BF16 = 0, 1, 2, 3, 4  # moe.cuh's Fmt
ACTIVATION = {"float16": "half", "bfloat16": "__nv_bfloat16"}
WARPS = 8  # rows per block of gate_up and down (one warp a row)
ROUTE_WARPS = 4  # tokens per block of route
MAX_EXPERTS = 1024


def _format(node: Any, weight_dtype: str) -> tuple[int, int, int] | None:
    """(Fmt, group, pieces per weight), or None where moe.cuh does not take the weights."""
    if node.op == "moe":
        code = {"float16": F16, "bfloat16": BF16}.get(weight_dtype)
        return None if code is None else (code, 0, 1)
    fmt = QuantFormat.from_attrs(node.attrs)
    if fmt.group_size % 32:
        return None
    return (Q8 if fmt.bits == 8 else Q4_1 if fmt.has_min else Q4), fmt.group_size, fmt.num_pieces


def lower(it: Any, node: Any, args: list) -> Any:
    if os.environ.get(ENV, "1") == "0":
        return None
    x, logits, weights = args[0], args[1], list(args[2:])
    planned = _format(node, weights[0].dtype)
    if x.dtype not in ACTIVATION or logits.dtype != x.dtype or planned is None:
        return None
    code, group, per = planned
    experts, inter = int(weights[0].shape[0]), int(weights[0].shape[1])
    hidden = int(x.shape[-1])
    if hidden % 32 or inter % 32 or experts > MAX_EXPERTS:
        return None
    top_k, norm = int(node.attrs["top_k"]), int(bool(node.attrs["norm_topk_prob"]))
    act = ACTIVATION[x.dtype]

    def compute(xt: te.Tensor, lg: te.Tensor, *packed: te.Tensor) -> Any:
        lead = list(xt.shape[:-1])
        tokens = math.prod(lead) if lead else 1
        slots = tokens * top_k

        def body(ins, outs):
            xb, lgb, pieces = ins[0], ins[1], list(ins[2:])
            y, ids, wts, h = outs
            ptrs = []
            for i in range(3):
                w = pieces[i * per:(i + 1) * per]
                ptrs.append([w[0].access_ptr("r"), (w[1] if per > 1 else w[0]).access_ptr("r"),
                             (w[2] if per > 2 else w[0]).access_ptr("r")])
            t = tirx.Cast("int32", tokens)
            route = f"ember::moe::route<{experts}, {top_k}, {norm}, {act}>"
            gate_up = f"ember::moe::gate_up<{code}, {hidden}, {inter}, {top_k}, {WARPS}, {act}>"
            down = f"ember::moe::down<{code}, {hidden}, {inter}, {top_k}, {WARPS}, {act}>"
            route_blocks = tirx.floordiv(t + ROUTE_WARPS - 1, ROUTE_WARPS)
            return tirx.SeqStmt([
                launch(tirx.call_extern("int32", route, t, lgb.access_ptr("r"), ids.access_ptr("w"),
                                        wts.access_ptr("w")), route_blocks, 32 * ROUTE_WARPS),
                launch(tirx.call_extern("int32", gate_up, t, xb.access_ptr("r"), ids.access_ptr("r"), *ptrs[0],
                                        *ptrs[1], tirx.const(group, "int32"), h.access_ptr("w")),
                       t * (top_k * (-(-inter // WARPS))), 32 * WARPS),
                launch(tirx.call_extern("int32", down, t, h.access_ptr("r"), ids.access_ptr("r"),
                                        wts.access_ptr("r"), *ptrs[2], tirx.const(group, "int32"),
                                        y.access_ptr("w")), t * (-(-hidden // WARPS)), 32 * WARPS),
            ])

        shapes = [lead + [hidden], [slots], [slots], [slots, inter]]
        return extern(shapes, [xt, lg, *packed], body, dtype=[x.dtype, "int32", "float32", "float32"],
                      name="ember_moe")

    out = op.tensor_expr_op(compute, f"{node.attrs.get('scheme', weights[0].dtype)}_moe", [x, logits, *weights],
                            attrs=ATTRS)
    return out[0] if isinstance(out, (list, tuple)) else out


LOWERINGS = {"moe": lower, "quant_moe": lower}
