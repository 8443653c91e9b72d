"""Fused operators: what the fusion passes (passes/fuse_*.py) rewrite the model's plain ops into.

Model code never emits these; each one names a pattern of plain ops (given per op) that a pass replaced.
Semantics are those of the pattern, with intermediate math in fp32.
"""
from __future__ import annotations

from .ops import ShapeError, _float, _need, register
from .types import TensorType


@register("paged_attention_qkv", 1, side_effect=True,
          doc="paged_attention_qkv(qkv[B, S, (H + 2*KVH) * D]) -> [B, S, H * D]: paged_attention on the output of "
              "the fused qkv projection (rows: q heads, k heads, v heads), flattened heads out. = reshape("
              "paged_attention(q, k, v), [B, S, H * D]) with q, k, v the head-reshaped thirds of qkv. "
              "attrs: those of paged_attention plus num_heads (H) and num_kv_heads (KVH)")
def _paged_attention_qkv(t, attrs):
    (qkv,) = t
    _float(qkv, "paged_attention_qkv input")
    _need(qkv.ndim == 3, f"paged_attention_qkv expects [batch, seq, (H + 2*KVH) * head_dim], got {qkv}")
    for key in ("layer", "sm_scale", "num_heads", "num_kv_heads"):
        _need(key in attrs, f"paged_attention_qkv needs attr {key}")
    h, kvh, width = attrs["num_heads"], attrs["num_kv_heads"], qkv.shape[2]
    _need(h > 0 and kvh > 0 and h % kvh == 0, f"paged_attention_qkv: {h} query heads are not a multiple of {kvh} "
                                               f"kv heads")
    _need(isinstance(width, int) and width % (h + 2 * kvh) == 0,
          f"paged_attention_qkv: {qkv} does not hold {h} + 2*{kvh} heads")
    return [TensorType(qkv.shape[:2] + (h * (width // (h + 2 * kvh)),), qkv.dtype)]


@register("swiglu", 1, doc="swiglu(x[..., 2*I]) -> [..., I] = silu(x[..., :I]) * x[..., I:]")
def _swiglu(t, attrs):
    (x,) = t
    _float(x, "swiglu input")
    last = x.shape[-1]
    _need(isinstance(last, int) and last % 2 == 0, f"swiglu needs an even static last dim, got {x}")
    return [TensorType(x.shape[:-1] + (last // 2,), x.dtype)]


@register("add_rms_norm", 3, doc="add_rms_norm(a, b, weight[H]) -> (s = a + b, rms_norm(s, weight)); attrs: eps. "
                                 "The sum feeds the next residual add, the normed value the next layer")
def _add_rms_norm(t, attrs):
    a, b, weight = t
    _float(a, "add_rms_norm input")
    if a != b:
        raise ShapeError(f"add_rms_norm: addends {a} and {b} differ (broadcasting adds are not fused)")
    _need(weight.shape == (a.shape[-1],), f"add_rms_norm: weight {weight} does not match input {a}")
    _need("eps" in attrs, "add_rms_norm needs attr eps")
    return [a, a]
