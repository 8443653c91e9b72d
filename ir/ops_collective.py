"""Tensor-parallel operators: what passes/shard_tensor_parallel.py inserts into a model split over N shards.

Every shard runs the same function on its own slice of the weights; these ops are where the shards meet. Their
semantics are over the group of `shards` ranks (each rank's x is its own tensor; the output is the same on all).
Model code never emits them.
"""
from __future__ import annotations

from .ops import _float, _need, register
from .types import TensorType


def _shards(attrs) -> int:
    shards = attrs.get("shards")
    _need(isinstance(shards, int) and not isinstance(shards, bool) and shards >= 2,
          f"collective ops need an int attr shards >= 2, got {shards!r}")
    return shards


@register("all_reduce", 1, doc="all_reduce(x) -> x: the sum over the ranks of each rank's x (row-parallel "
                               "linears' partial products, the vocabulary-parallel embedding). attrs: shards, "
                               "op ('sum')")
def _all_reduce(t, attrs):
    (x,) = t
    _float(x, "all_reduce input")
    _shards(attrs)
    _need(attrs.get("op") == "sum", f"all_reduce supports op 'sum', got {attrs.get('op')!r}")
    return [x]


@register("all_gather", 1, doc="all_gather(x[..., C]) -> [..., shards * C]: the ranks' x concatenated on the last "
                               "axis in rank order (the vocabulary-parallel LM head's logits). attrs: shards")
def _all_gather(t, attrs):
    (x,) = t
    shards = _shards(attrs)
    last = x.shape[-1] if x.ndim else None
    _need(isinstance(last, int), f"all_gather needs a static last dim, got {x}")
    return [TensorType(x.shape[:-1] + (shards * last,), x.dtype)]


@register("vocab_shard", 2, doc="vocab_shard(ids int32[*S], start int32[1]) -> (local int32[*S], mask dtype[*S, 1]):"
                                " a rank's view of token ids when it holds embedding rows [start, start + rows): "
                                "local = ids - start clamped into [0, rows), mask 1 where ids is one of its rows, "
                                "else 0. attrs: rows, dtype")
def _vocab_shard(t, attrs):
    ids, start = t
    _need(ids.dtype == "int32", f"vocab_shard ids must be int32, got {ids}")
    _need(start.shape == (1,) and start.dtype == "int32", f"vocab_shard start must be int32[1], got {start}")
    rows = attrs.get("rows")
    _need(isinstance(rows, int) and rows > 0, f"vocab_shard needs a positive int attr rows, got {rows!r}")
    dtype = attrs.get("dtype")
    _need(isinstance(dtype, str), "vocab_shard needs attr dtype")
    mask = TensorType(ids.shape + (1,), dtype)
    _float(mask, "vocab_shard mask")
    return [ids, mask]
