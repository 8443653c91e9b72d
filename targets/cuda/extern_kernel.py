"""What ember's hand-written cuda lowerings share: the body of an opaque PrimFunc that launches one
`call_extern` of a kernels/*.cuh template over a 1-D grid, the pointer arguments of the quantized-linear kernels, and
the attributes that keep FuseOps and dlight away."""
from __future__ import annotations

from typing import Any

import tvm
from tvm import tirx

OPAQUE = 8  # relax OpPatternKind.kOpaque
ATTRS = {"op_pattern": OPAQUE, "tirx.is_scheduled": True}
NO_BIAS, HALF_BIAS, FLOAT_BIAS = 0, 1, 2  # the Bias enum of gemv.cuh and lowbatch.cuh


def launch(call: Any, blocks: Any, threads: int) -> tirx.Stmt:
    """`call` (a call_extern expression) run by `blocks` blocks of `threads` threads (blockIdx.x, threadIdx.x)."""
    bx = tirx.IterVar(tvm.ir.Range(0, blocks), tirx.Var("blockIdx.x", "int32"), tirx.IterVar.ThreadIndex,
                      "blockIdx.x")
    tx = tirx.IterVar(tvm.ir.Range(0, threads), tirx.Var("threadIdx.x", "int32"), tirx.IterVar.ThreadIndex,
                      "threadIdx.x")
    return tirx.AttrStmt(bx, "thread_extent", blocks, tirx.AttrStmt(tx, "thread_extent", threads, tirx.Evaluate(call)))


def quant_pointers(ins: list, outs: list, bias: int) -> list[Any]:
    """The pointer arguments of a quantized-linear kernel (gemv.cuh, lowbatch.cuh, prefill_qgemm.cuh): x, codes,
    scales, mins (the codes again when the scheme has none), bias (x when there is none), y. access_ptr includes
    each buffer's own element offset, so a view with a byte offset stays right."""
    x, pieces = ins[0], list(ins[1:])
    bias_buf = pieces.pop() if bias != NO_BIAS else x
    weight, scales = pieces[0], pieces[1]
    mins = pieces[2] if len(pieces) > 2 else weight
    return [b.access_ptr("r") for b in (x, weight, scales, mins, bias_buf)] + [outs[0].access_ptr("w")]


def bias_code(bias: list[Any]) -> int | None:
    """The kernels' Bias for an optional bias tensor; None for a dtype they do not take."""
    if not bias:
        return NO_BIAS
    return {"float16": HALF_BIAS, "float32": FLOAT_BIAS}.get(bias[0].dtype)
