"""Lowerings of the fused ops (ir/ops_fused.py), written for the fewest kernels after TVM's FuseOps.

What FuseOps does decides the shape of each lowering: it folds elementwise ops into the epilogue of the GEMM
before them and into a reduction after them, but nothing into a GEMM's prologue, and a PrimFunc with two outputs
is split into several GPU kernels by dlight. So:
  paged_attention_qkv  the cache builtin on a view of the qkv GEMM's output (the unfused path adds a concat kernel)
                       and a view out (nn's wrapper adds a reshape that static shapes turn into a copy kernel)
  swiglu               one elementwise TE kernel, fp32 math, reading both halves of gate_up
  add_rms_norm         the add stays a Relax add (it joins the epilogue of the GEMM that made an addend), the norm
                       is one TE kernel that casts in and out itself (fp32 accumulation); TVM's rms_norm legalizes
                       to three GPU kernels in fp16 (the cast of x, the cast of the weight, the norm)
"""
from __future__ import annotations

from tvm import relax, te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from .lower import lowers

F32 = "float32"


def _f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return x if x.dtype == F32 else x.astype(F32)


def rms_norm_kernel(x: nn.Tensor, weight: nn.Tensor, eps: float, name: str = "rms_norm") -> nn.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis, in fp32, as one PrimFunc (one kernel)."""

    def compute(xt: te.Tensor, wt: te.Tensor) -> te.Tensor:
        width = int(xt.shape[-1])
        k = te.reduce_axis((0, width), name="k")
        sumsq = te.compute(xt.shape[:-1], lambda *i: te.sum(_f32(xt[(*i, k)]) * _f32(xt[(*i, k)]), axis=k),
                           name="sumsq")

        def element(*i):
            scale = tirx.rsqrt(sumsq[i[:-1]] / tirx.const(float(width), F32) + tirx.const(eps, F32))
            return (_f32(xt[i]) * scale * _f32(wt[i[-1]])).astype(xt.dtype)

        return te.compute(xt.shape, element, name=name)

    return op.tensor_expr_op(compute, name, [x, weight])


def swiglu_kernel(x: nn.Tensor, name: str = "swiglu") -> nn.Tensor:
    """silu(x[..., :I]) * x[..., I:] in fp32, as one elementwise PrimFunc."""
    half = int(x.shape[-1]) // 2

    def compute(xt: te.Tensor) -> te.Tensor:
        def element(*i):
            gate = _f32(xt[(*i[:-1], i[-1])])
            up = _f32(xt[(*i[:-1], i[-1] + half)])
            return (gate * tirx.sigmoid(gate) * up).astype(xt.dtype)

        return te.compute((*xt.shape[:-1], half), element, name=name)

    return op.tensor_expr_op(compute, name, [x])


@lowers("paged_attention_qkv")
def _paged_attention_qkv(it, node, args):
    # nn's PagedKVCache.attention_with_fused_qkv wants [B, S, heads, D] and reshapes it again, and on static
    # shapes FuseOps turns two reshapes in a row into a copy kernel; so call the builtin on one reshape (a view).
    (qkv,) = args
    b, s, width = qkv.shape
    heads, kv_heads = node.attrs["num_heads"], node.attrs["num_kv_heads"]
    dim = int(width) // (heads + 2 * kv_heads)
    stacked = op.reshape(qkv, [b * s, heads + 2 * kv_heads, dim])
    out = relax.call_dps_packed(
        "vm.builtin.attention_kv_cache_attention_with_fused_qkv",
        [it.kv._expr, relax.prim_value(node.attrs["layer"]), relax.prim_value(it.attention_scale(node)), stacked._expr],
        out_ty=relax.TensorType((b * s, heads, dim), qkv.dtype),
    )
    return op.reshape(op.wrap_nested(out, name="attn"), [b, s, heads * dim])


@lowers("swiglu")
def _swiglu(it, node, args):
    return swiglu_kernel(args[0])


@lowers("add_rms_norm")
def _add_rms_norm(it, node, args):
    a, b, weight = args
    total = a + b
    return [total, rms_norm_kernel(total, weight, node.attrs["eps"])]
