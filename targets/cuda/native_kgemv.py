"""cuda lowering of `quant_linear` at decode batch 1 for the GGUF formats kept native (kernels/kgemv.cuh).

Takes q5f16 (Q5_0), q5f16_1 (Q5_1), q4_k, q5_k and q6_k layers of the `decode1` entry point (fp16 activations,
static leading dims of product 1, K a multiple of 32 / 256, bias fp16 or fp32 or none): an opaque PrimFunc whose
body calls `ember::kgemv::run<format, N, K, warps, rows, bias>` (device_code.py prepends the source). Everything
else returns None (the generic lowering, lower_quant.py, which dlight schedules with the dequantization inlined
into its loads: batched decode and prefill of these formats). EMBER_CUDA_GEMV=0 turns it off with the other GEMVs.
"""
from __future__ import annotations

from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ..cpu.native_linear import Q2_K, Q3_K, WIDE
from ..extern_op import extern
from ...ir.ops_quant import QuantFormat
from .extern_kernel import ATTRS, NO_BIAS, bias_code, launch
from .native_gemv import is_decode1

WARPS, ROWS = 4, 2  # 4 warps of 2 rows: the layout of gemv.cuh's measured default (retune on the GPU)
PIECES = ("qweight", "qhigh", "scales", "mins", "super", "super_mins")


def format_code(fmt: QuantFormat, cols: int) -> int | None:
    """kgemv.cuh's Format (= native/linear.c's codes), or None where the kernel does not apply (Q2_K and Q3_K: the
    generic dequantize lowering at every batch size)."""
    code = WIDE.get((fmt.bits, fmt.has_min, fmt.super_block))
    if code is None or code in (Q2_K, Q3_K):
        return None
    if cols % max(fmt.super_block, 32) or fmt.group_size != (16 if fmt.bits == 6 else 32):
        return None
    return code


def kernel_name(code: int, rows: int, cols: int, bias: int, warps: int = WARPS, per_warp: int = ROWS) -> str:
    return f"ember::kgemv::run<{code}, {rows}, {cols}, {warps}, {per_warp}, {bias}>"


def kgemv_compute(fmt: QuantFormat, code: int, rows: int, cols: int, bias: int):
    name = kernel_name(code, rows, cols, bias)
    blocks, threads = -(-rows // (WARPS * ROWS)), 32 * WARPS

    def compute(xt: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])

        def body(ins, outs):
            x, pieces = ins[0], list(ins[1:])
            bias_buf = pieces.pop() if bias != NO_BIAS else x
            named = dict(zip(fmt.piece_names, pieces))
            ptrs = [named.get(k, named["qweight"]).access_ptr("r") for k in PIECES]
            args = [x.access_ptr("r"), *ptrs, bias_buf.access_ptr("r"), outs[0].access_ptr("w")]
            return launch(tirx.call_extern("int32", name, *args), blocks, threads)

        return extern(lead + [rows], [xt, *tensors], body, dtype="float16", name="ember_kgemv")

    return compute


def lower_quant_linear(it: Any, node: Any, args: list) -> Any:
    fmt = QuantFormat.from_attrs(node.attrs)
    x = args[0]
    cols = int(node.attrs["in_features"])
    code = format_code(fmt, cols)
    if code is None or x.dtype != "float16" or not is_decode1(list(x.shape[:-1])):
        return None
    bias = bias_code(list(args[1 + fmt.num_pieces:]))
    if bias is None:
        return None
    rows = int(args[1].shape[0])
    compute = kgemv_compute(fmt, code, rows, cols, bias)
    return op.tensor_expr_op(compute, f"{node.attrs['scheme']}_kgemv", list(args), attrs=ATTRS)
