"""SwiGLU on the fused gate_up projection: one op reads both halves, computes in fp32, writes the product.

    gate, up = split(gate_up, [I, I], axis=-1)
    mul(silu(gate), up)  ->  swiglu(gate_up)        # the MLP as the model writes it
    mul(up, silu(gate))  ->  swiglu(gate_up)        # the same, operands swapped

Runs after fuse_linears (which makes the split, gate rows first). The silu and split are left for dead-code
elimination; the mul's output value is kept, so the down projection reads it unchanged.
"""
from __future__ import annotations

from ..ir.graph import Module, Node, Value
from .rewrite import Splice, live_users, single_user


def _gate_up(mul: Node, users: dict[int, list[Node]], returned: set[int]) -> Value | None:
    """gate_up if `mul` is silu(gate_up[..., :I]) * gate_up[..., I:] (either operand order), else None."""
    for act, up in (mul.inputs, mul.inputs[::-1]):
        silu = act.producer
        if silu is None or silu.op != "silu" or single_user(act, users, returned) is not mul:
            continue
        gate = silu.inputs[0]
        split = gate.producer
        if split is None or split.op != "split" or split.outputs != [gate, up]:
            continue  # gate and up must be the two halves of one split, gate first
        x = split.inputs[0]
        sizes = split.attrs["sizes"]
        if split.attrs["axis"] % x.type.ndim != x.type.ndim - 1 or sizes[0] != sizes[1]:
            continue
        if single_user(gate, users, returned) is silu and single_user(up, users, returned) is mul:
            return x
    return None


class FuseSwiGLU:
    name = "fuse_swiglu"

    def __call__(self, module: Module) -> Module:
        for function in module.functions.values():
            users = live_users(function)
            returned = {id(v) for v in function.outputs}
            splice = Splice(function)
            for node in function.nodes:
                if node.op != "mul":
                    continue
                gate_up = _gate_up(node, users, returned)
                if gate_up is not None:
                    splice.replace(node, [splice.node("swiglu", [gate_up], {}, outputs=node.outputs)])
            splice.apply()
        return module
