"""Fuse rope into paged attention: the KV cache rotates q and k itself before it appends k.

    q' = rope(q, cfg); k' = rope(k, cfg); o = paged_attention(q', k', v)
      ->  o = paged_attention(q, k, v, rope=cfg)

Applies only when both q and k of an attention node come from rope nodes with equal attrs that nobody
else reads; the rope nodes are left for dead-code elimination.

LongRoPE stays in the graph (UNFUSED_ROPE_TYPES): the KV cache's rope kernels (TVM's, and ember's cpu and cuda
ones that replace them) see only each token's position, while LongRoPE's table is chosen per forward call as
transformers does (targets/lower.py `_longrope`); TVM's own longrope kernel decides by the number of tokens in the
call instead, which is not transformers' rule.
"""
from __future__ import annotations

from ..ir.graph import Module

UNFUSED_ROPE_TYPES = ("longrope",)


class FuseRopeIntoAttention:
    name = "fuse_rope"

    def __call__(self, module: Module) -> Module:
        for function in module.functions.values():
            users = function.users()
            returned = {id(v) for v in function.outputs}
            for node in function.nodes:
                if node.op != "paged_attention" or node.attrs.get("rope"):
                    continue
                q, k, _ = node.inputs
                rq, rk = q.producer, k.producer
                if rq is None or rk is None or rq.op != "rope" or rk.op != "rope" or rq.attrs != rk.attrs:
                    continue
                if (rq.attrs.get("scaling") or {}).get("rope_type") in UNFUSED_ROPE_TYPES:
                    continue
                if len(users[id(q)]) != 1 or len(users[id(k)]) != 1 or {id(q), id(k)} & returned:
                    continue
                node.inputs = [rq.inputs[0], rk.inputs[0], node.inputs[2]]
                node.attrs = {**node.attrs, "rope": dict(rq.attrs)}
        return module
