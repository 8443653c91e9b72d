"""cuda lowering of `add_rms_norm` onto one kernel (kernels/norm.cuh): the residual sum and its RMSNorm together.

The generic lowering (lower_fused.py) leaves the add to join the epilogue of the GEMM that made an addend; when
that GEMM is one of ember's opaque kernels (native_gemv.py) the add stays a kernel of its own, so every layer
pays two extra launches. This one reads both addends once and writes the sum and the norm, for fp16 activations
and an fp16 weight whose width is whole 16-byte chunks; anything else returns None (the generic lowering).
"""
from __future__ import annotations

import math
import os
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ..extern_op import extern
from .extern_kernel import ATTRS, launch

MAX_VEC = 4  # 16-byte chunks of a row per thread, held in registers
ENV = "EMBER_CUDA_NORM"  # "0": the generic lowering (a Relax add + the TE norm), for A/B runs


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def launch_shape(width: int) -> tuple[int, int]:
    """(threads, chunks per thread) for a row of `width` halves: the fewest chunks per thread (<= MAX_VEC) with at
    most 1024 threads, the block rounded up to whole warps."""
    chunks = width // 8
    for vec in range(1, MAX_VEC + 1):
        threads = -(-chunks // vec)
        threads = -(-threads // 32) * 32
        if threads <= 1024:
            return threads, vec
    raise ValueError(f"row of {width} halves is too wide for one block")


def supported(a: Any, b: Any, weight: Any) -> bool:
    width = a.shape[-1]
    if not isinstance(width, (int, tirx.IntImm)):
        return False
    width = int(width)
    return (a.dtype == b.dtype == weight.dtype == "float16" and width % 8 == 0
            and width <= 1024 * MAX_VEC * 8 and list(map(str, a.shape)) == list(map(str, b.shape)))


def add_rms_norm_compute(width: int, eps: float):
    threads, vec = launch_shape(width)
    name = f"ember::norm::add_rms_norm<{width}, {threads}, {vec}>"

    def compute(at: te.Tensor, bt: te.Tensor, wt: te.Tensor) -> list[te.Tensor]:
        lead = list(at.shape[:-1])
        rows = math.prod(lead) if lead else 1
        if not isinstance(rows, int):
            rows = tirx.Cast("int32", rows)  # thread extents are int32; a symbolic batch is an int64 var

        def body(ins, outs):
            ptrs = [ins[0].access_ptr("r"), ins[1].access_ptr("r"), ins[2].access_ptr("r"),
                    outs[0].access_ptr("w"), outs[1].access_ptr("w")]
            return launch(tirx.call_extern("int32", name, *ptrs, tirx.const(eps, "float32")), rows, threads)

        shape = lead + [width]
        return extern([shape, shape], [at, bt, wt], body, dtype=["float16", "float16"], name="ember_add_rms_norm")

    return compute


def lower_add_rms_norm(it: Any, node: Any, args: list) -> Any:
    a, b, weight = args
    if not supported(a, b, weight):
        return None
    width = int(a.shape[-1])
    out = op.tensor_expr_op(add_rms_norm_compute(width, float(node.attrs["eps"])), "add_rms_norm", [a, b, weight],
                            attrs=ATTRS)
    return [out[0], out[1]]


LOWERINGS = {"add_rms_norm": lower_add_rms_norm}
