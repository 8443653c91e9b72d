"""Lowering of the quantized-weight ops (ir/ops_quant.py): dequantization inside the matmul kernel.

`quant_linear` becomes ONE PrimFunc (via nn's tensor_expr_op):
    dequant[n, k]   = the weight value from qweight/scales/mins   (a spatial stage, never a whole tensor)
    acc[..., n]     = sum_k f32(x[..., k]) * f32(dequant[n, k])   (fp32 accumulation)
    y[..., n]       = (acc + f32(bias[n])) cast to x.dtype        (injective epilogue)
For fp16/bf16 activations (GPUs) the dequant stage is a block of its own, which dlight inlines into the reduction
(GEMV, decode at batch 1: each lane loads 4-byte words of codes) or into the shared-memory tile loads (Matmul,
prefill). Its dtype is float32 when the token count is static (the GEMV form the quant-gemv guide measured) and
the activation dtype otherwise, so that the Matmul rule can use tensor cores. Where the target asks for no such
stage (`Target.dequant_stage`, cpu) the value is written straight into the sum: dlight has no cpu GEMM rule, and an
unscheduled stage would be computed whole. The epilogue is always there: dlight's cpu Reduction rule wants an injective last block, and then
parallelizes over output elements. No kernel writes a dequantized weight tensor; values are computed in float32,
so GGUF weights dequantize exactly as `gguf.quants.dequantize` does.
`quant_embedding` is one injective kernel that gathers and dequantizes the rows of the requested ids.
"""
from __future__ import annotations

from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ..ir.ops_quant import QuantFormat
from .lower import lowers


def _f32(expr: Any) -> Any:
    return expr.astype("float32")


def _field(words: te.Tensor, n: Any, k: Any, width: int) -> Any:
    """The `width`-bit field of k in row n of uint32 words holding 32 / width consecutive k each (low bits first)."""
    per = 32 // width
    shift = tirx.Cast("uint32", (k % per) * width)
    return (words[n, k // per] >> shift) & tirx.const((1 << width) - 1, "uint32")


def dequant_value(fmt: QuantFormat, pieces: list[te.Tensor], n: Any, k: Any) -> Any:
    """The float32 weight value W[n, k] as a TIR expression over the packed tensors (ir/ops_quant.py)."""
    named = dict(zip(fmt.piece_names, pieces))
    weight, g = named["qweight"], k // fmt.group_size
    codes = named["scales"][n, g]
    scale = _f32(codes & tirx.const(15, "uint8") if fmt.shared_codes else codes)
    if fmt.super_block:  # d * code: exact in float32, as gguf's dequantize computes it
        scale = _f32(named["super"][n, k // fmt.super_block]) * scale
    if fmt.bits == 8:
        return _f32(weight[n, k]) * scale
    code = _field(weight, n, k, fmt.low_bits)
    if fmt.high_bits:
        code = code | (_field(named["qhigh"], n, k, fmt.high_bits) << tirx.const(fmt.low_bits, "uint32"))
    value = _f32(code)
    if fmt.has_min:
        if fmt.super_block:
            min_code = codes >> tirx.const(4, "uint8") if fmt.shared_codes else named["mins"][n, g]
            low = -(_f32(named["super_mins"][n, k // fmt.super_block]) * _f32(min_code))
        else:
            low = _f32(named["mins"][n, g])
        return value * scale + low
    return (value - tirx.const(float(fmt.offset), "float32")) * scale


def _is_static(dims: Any) -> bool:
    return all(isinstance(d, (int, tirx.IntImm)) for d in dims)


@lowers("quant_linear")
def _quant_linear(it, node, args):
    fmt = QuantFormat.from_attrs(node.attrs)
    x, pieces, bias = args[0], list(args[1:1 + fmt.num_pieces]), list(args[1 + fmt.num_pieces:])
    cols = int(node.attrs["in_features"])
    out_dtype = x.dtype

    def compute(xt: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        packed, bias_t = list(tensors[:fmt.num_pieces]), tensors[fmt.num_pieces:]
        rows = packed[0].shape[0]
        lead = list(xt.shape[:-1])
        if not it.dequant_stage:  # the value goes straight into the sum (Target.dequant_stage)
            def weight(n: Any, k: Any) -> Any:
                return dequant_value(fmt, packed, n, k)
        else:
            stage = "float32" if _is_static(lead) else out_dtype
            table = te.compute((rows, cols), lambda n, k: dequant_value(fmt, packed, n, k).astype(stage),
                               name="dequant")

            def weight(n: Any, k: Any) -> Any:
                return _f32(table[n, k])
        r = te.reduce_axis((0, cols), "k")
        acc = te.compute(lead + [rows], lambda *i: te.sum(_f32(xt[(*i[:-1], r)]) * weight(i[-1], r), axis=r),
                         name="matmul")

        def epilogue(*i):
            value = acc[i] + _f32(bias_t[0][i[-1]]) if bias_t else acc[i]
            return value.astype(out_dtype)

        return te.compute(lead + [rows], epilogue, name="epilogue")

    return op.tensor_expr_op(compute, f"{node.attrs['scheme']}_linear", [x, *pieces, *bias])


@lowers("quant_embedding")
def _quant_embedding(it, node, args):
    fmt = QuantFormat.from_attrs(node.attrs)
    ids, pieces = args[0], list(args[1:])
    cols, dtype = int(node.attrs["in_features"]), node.attrs["dtype"]

    def compute(ids_t: te.Tensor, *packed: te.Tensor) -> te.Tensor:
        last = int(packed[0].shape[0]) - 1

        def row_value(*i):
            # clip like the float embedding's take(mode="clip"): an out-of-range id never becomes a wild read
            row = tirx.max(tirx.min(ids_t[i[:-1]], last), 0)
            return dequant_value(fmt, list(packed), row, i[-1]).astype(dtype)

        return te.compute(list(ids_t.shape) + [cols], row_value, name="embedding")

    return op.tensor_expr_op(compute, f"{node.attrs['scheme']}_embedding", [ids, *pieces])

