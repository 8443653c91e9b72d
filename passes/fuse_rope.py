"""Fuse rope into paged attention: the KV cache rotates q and k itself before it appends k.

    q' = rope(q, cfg); k' = rope(k, cfg); o = paged_attention(q', k', v)
      ->  o = paged_attention(q, k, v, rope=cfg)

Applies only when both q and k of an attention node come from rope nodes with equal attrs that nobody
else reads; the rope nodes are left for dead-code elimination. The KV cache holds one rope for every layer,
so the pass fuses all attention nodes of the module or none: where layers differ in rope (Gemma 3's local and
global bases) or a rope's scaling is one the cache's kernels do not compute (FUSABLE_ROPE_TYPES), rope stays
the model's own op, before the cache append.

LongRoPE stays in the graph (not in FUSABLE_ROPE_TYPES): its table is chosen per forward call as transformers
does (targets/lower.py `_longrope`); TVM's own longrope kernel decides by the number of tokens in the call instead.
"""
from __future__ import annotations

from ..ir.graph import Module, Node

FUSABLE_ROPE_TYPES = ("default", "llama3")  # what the KV cache's rope kernels (TVM's, targets/cpu, targets/cuda) do


class FuseRopeIntoAttention:
    name = "fuse_rope"

    def __call__(self, module: Module) -> Module:
        plan: list[tuple[Node, Node, Node]] = []
        attention = 0
        for function in module.functions.values():
            users = function.users()
            returned = {id(v) for v in function.outputs}
            for node in function.nodes:
                if node.op != "paged_attention" or node.attrs.get("rope"):
                    continue
                attention += 1
                q, k, _ = node.inputs
                rq, rk = q.producer, k.producer
                if rq is None or rk is None or rq.op != "rope" or rk.op != "rope" or rq.attrs != rk.attrs:
                    continue
                if len(users[id(q)]) != 1 or len(users[id(k)]) != 1 or {id(q), id(k)} & returned:
                    continue
                plan.append((node, rq, rk))
        ropes = [rq.attrs for _, rq, _ in plan]
        if len(plan) != attention or any(r != ropes[0] for r in ropes[1:]):
            return module  # not every layer's rope can move into the cache, or they differ: leave them all
        if ropes and (ropes[0].get("scaling") or {}).get("rope_type", "default") not in FUSABLE_ROPE_TYPES:
            return module
        for node, rq, rk in plan:
            node.inputs = [rq.inputs[0], rk.inputs[0], node.inputs[2]]
            node.attrs = {**node.attrs, "rope": dict(rq.attrs)}
        return module
