"""Attention reads the fused qkv projection directly and hands o_proj its input: no split, concat or copies.

    q, k, v = split(qkv, [H*D, KVH*D, KVH*D], axis=-1)
    o = paged_attention(reshape(q, [B, S, H, D]), reshape(k, [B, S, KVH, D]), reshape(v, [B, S, KVH, D]))
    y = reshape(o, [B, S, H*D])
      ->  y = paged_attention_qkv(qkv, num_heads=H, num_kv_heads=KVH)

TVM's paged KV cache takes q, k and v stacked on the head axis (`attention_with_fused_qkv`); the unfused
lowering builds that stack with a concat kernel per layer. Here the stack is the qkv linear's own output. The
op also takes in the reshape of its result (when o has no other reader; otherwise o is reshaped back from y),
because on static shapes TVM fuses two reshapes in a row into a copy kernel instead of a view.
Runs after fuse_linears (which makes the split) and fuse_rope (a q or k that goes through a rope node does not
match). The split and reshapes are left for dead-code elimination.
"""
from __future__ import annotations

from ..ir.graph import Module, Node, Value
from .rewrite import Splice, live_users, single_user


def _stacked_heads(attention: Node, users: dict[int, list[Node]], returned: set[int]) -> Value | None:
    """The fused qkv [B, S, (H + 2*KVH) * D] whose head-reshaped thirds are attention's q, k, v, or None."""
    views = [v.producer for v in attention.inputs]
    if any(r is None or r.op != "reshape" or single_user(r.outputs[0], users, returned) is not attention
           for r in views):
        return None
    parts = [r.inputs[0] for r in views]
    split = parts[0].producer
    if split is None or split.op != "split" or split.outputs != parts:
        return None  # not exactly the three pieces of one split, in q, k, v order
    qkv = split.inputs[0]
    if qkv.type.ndim != 3 or split.attrs["axis"] % 3 != 2:
        return None
    if any(single_user(p, users, returned) is None for p in parts):
        return None
    if any(r.outputs[0].type.shape[:2] != qkv.type.shape[:2] for r in views):
        return None
    return qkv


class FuseQKVIntoAttention:
    name = "fuse_qkv"

    def __call__(self, module: Module) -> Module:
        for function in module.functions.values():
            users = live_users(function)
            returned = {id(v) for v in function.outputs}
            splice = Splice(function)
            for node in function.nodes:
                qkv = _stacked_heads(node, users, returned) if node.op == "paged_attention" else None
                if qkv is None:
                    continue
                out = node.outputs[0]
                b, s, heads, dim = out.type.shape
                attrs = {**node.attrs, "num_heads": heads, "num_kv_heads": node.inputs[1].type.shape[2]}
                flat = single_user(out, users, returned)
                if flat is not None and flat.op == "reshape" and flat.outputs[0].type.shape == (b, s, heads * dim):
                    splice.replace(flat, [])
                    splice.replace(node, [splice.node("paged_attention_qkv", [qkv], attrs, outputs=flat.outputs)])
                else:
                    fused = splice.node("paged_attention_qkv", [qkv], attrs, hint="attn")
                    back = splice.node("reshape", fused.outputs, {"shape": (b, s, heads, dim)}, outputs=node.outputs)
                    splice.replace(node, [fused, back])
            splice.apply()
        return module
