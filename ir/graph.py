"""The graph IR: a Module of named Functions sharing one table of Parameters.

A Function is a list of Nodes in definition order (always topologically sorted). Every Node applies one
operator (see ops.py) to input Values and defines output Values. Values are function inputs, parameters
(weights, by name) or node outputs. The IR is mutable; passes edit it in place and re-verify.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from .types import TensorType

INPUT, PARAM, NODE = "input", "param", "node"


@dataclass(eq=False)
class Value:
    name: str
    type: TensorType
    kind: str = NODE  # INPUT | PARAM | NODE
    producer: "Node | None" = None

    def __repr__(self) -> str:
        return f"Value({self.ref}: {self.type})"

    @property
    def ref(self) -> str:
        return f"@{self.name}" if self.kind == PARAM else f"%{self.name}"


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value]
    attrs: dict[str, Any]
    outputs: list[Value] = field(default_factory=list)

    @property
    def output(self) -> Value:
        assert len(self.outputs) == 1, f"{self.op} has {len(self.outputs)} outputs"
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"Node({self.op}, {[v.ref for v in self.inputs]} -> {[v.ref for v in self.outputs]})"


@dataclass(eq=False)
class Function:
    name: str
    inputs: list[Value]
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)

    def users(self) -> dict[int, list[Node]]:
        """id(value) -> nodes that read it."""
        table: dict[int, list[Node]] = {}
        for node in self.nodes:
            for value in node.inputs:
                table.setdefault(id(value), []).append(node)
        return table

    def replace_uses(self, old: Value, new: Value) -> None:
        for node in self.nodes:
            node.inputs = [new if v is old else v for v in node.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]

    def fresh_name(self, hint: str) -> str:
        taken = {v.name for v in self.inputs}
        taken.update(v.name for n in self.nodes for v in n.outputs)
        if hint not in taken:
            return hint
        i = 1
        while f"{hint}_{i}" in taken:
            i += 1
        return f"{hint}_{i}"


@dataclass
class Param:
    name: str
    type: TensorType
    # Free-form facts passes attach (e.g. {"scheme": "q4f16", "source": "model.layers.0.mlp.up_proj.weight"}).
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class KVCacheSpec:
    """What the paged KV cache behind `paged_attention` holds; the lowering creates it from this."""

    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    sliding_window: int | None = None  # HF convention
    window_layers: tuple[int, ...] | None = None  # the layers sliding_window applies to; None: every layer


@dataclass
class Module:
    name: str
    params: dict[str, Param] = field(default_factory=dict)  # insertion order = argument order
    functions: dict[str, Function] = field(default_factory=dict)
    kv_cache: KVCacheSpec | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # e.g. {"vocab_size": ..., "compute_dtype": ...}

    def param_value(self, name: str) -> Value:
        param = self.params[name]
        return Value(name, param.type, PARAM)

    def iter_nodes(self) -> Iterator[tuple[Function, Node]]:
        for function in self.functions.values():
            for node in function.nodes:
                yield function, node

    def used_params(self) -> set[str]:
        return {v.name for _, n in self.iter_nodes() for v in n.inputs if v.kind == PARAM}
