"""What the fusion passes share: typed node construction and splicing replacements into a function.

A pass finds its matches first, then edits: `Splice(function)` hands out fresh value names, builds nodes whose
output types come from the op's type rule, and `apply()` swaps every replaced node for its replacement list in
one sweep, so the function stays in definition order. A replacement may take over the output Values of the node
it replaces (same names and types), so the readers of those values need no change.
"""
from __future__ import annotations

from typing import Any

from ..ir.graph import Function, Node, Value
from ..ir.ops import OPS, infer_types


class Splice:
    def __init__(self, function: Function) -> None:
        self.function = function
        self._taken = {v.name for v in function.inputs} | {v.name for n in function.nodes for v in n.outputs}
        self._replacements: dict[int, list[Node]] = {}

    def fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self._taken:
            i += 1
            name = f"{hint}_{i}"
        self._taken.add(name)
        return name

    def node(self, op: str, inputs: list[Value], attrs: dict[str, Any], hint: str = "",
             outputs: list[Value] | None = None) -> Node:
        """A node of `op`; its outputs are `outputs` (re-owned, types must match) or new values named from `hint`."""
        types = infer_types(op, [v.type for v in inputs], attrs)
        node = Node(op, list(inputs), dict(attrs))
        if outputs is None:
            outputs = [Value(self.fresh(hint), t) for t in types]
        elif [v.type for v in outputs] != types:
            raise AssertionError(f"{op} gives {', '.join(map(str, types))}, not the types of "
                                 f"{', '.join(v.ref for v in outputs)}")
        for value in outputs:
            value.producer = node
        node.outputs = list(outputs)
        return node

    def replace(self, old: Node, new: list[Node]) -> None:
        """`old` gives way to `new` (in order) at its position; an empty list deletes it."""
        if id(old) in self._replacements:
            raise AssertionError(f"{old} is replaced twice")
        self._replacements[id(old)] = new

    def apply(self) -> int:
        """Edit the function; returns the number of replaced nodes."""
        nodes: list[Node] = []
        for node in self.function.nodes:
            nodes.extend(self._replacements.get(id(node), [node]))
        self.function.nodes = nodes
        done, self._replacements = len(self._replacements), {}
        return done


def live_users(function: Function) -> dict[int, list[Node]]:
    """id(value) -> the live nodes that read it; dead nodes (left by an earlier pass for DCE) do not count."""
    live = {id(v) for v in function.outputs}
    users: dict[int, list[Node]] = {}
    for node in reversed(function.nodes):
        if OPS[node.op].side_effect or any(id(v) in live for v in node.outputs):
            live.update(id(v) for v in node.inputs)
            for value in node.inputs:
                users.setdefault(id(value), []).insert(0, node)
    return users


def single_user(value: Value, users: dict[int, list[Node]], returned: set[int]) -> Node | None:
    """The one node that reads `value`, or None if several do, none does, or the function returns it."""
    readers = users.get(id(value), [])
    if len(readers) != 1 or id(value) in returned:
        return None
    return readers[0]
