"""Horizontal fusion: sibling projections of one activation become one linear over concatenated weights.

    y_1 = linear(x, @p.a.weight, @p.a.bias?) ... y_n = linear(x, @p.z.weight, @p.z.bias?)
      ->  y = linear(x, @p.az.weight, @p.az.bias?);  y_1, ..., y_n = split(y, [N_1, ..., N_n], axis=-1)

The split outputs keep the names of the y_i, so their readers are untouched (fuse_qkv and fuse_swiglu then
consume `y` directly). The fused parameter records how it is made from the checkpoint (materialize.py):
`sources` and `source_shapes` are the members' in order, `concat_axis` is 0 (output rows), and the member
parameters are left for dead-code elimination, so importers stay one-to-one. Run it before quantization, which
then sees one linear with one weight.

A group is fused only if every read of every member parameter, in every function, belongs to an identical
group (prefill, decode and decode1 share weights, so all of them are rewritten or none), and only if quantization
will give every member the same scheme (`scheme_of`: per-tensor GGUF types and recipes can differ).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ..ir.graph import PARAM, Function, Module, Node, Param, Value
from ..ir.types import TensorType
from .rewrite import Splice

# Which sibling projections (leaf module names under one parent, in the fused row order) become which.
RULES: dict[tuple[str, ...], str] = {
    ("q_proj", "k_proj", "v_proj"): "qkv_proj",  # attention: [q | k | v] rows, read by fuse_qkv
    ("gate_proj", "up_proj"): "gate_up_proj",  # SwiGLU MLP: [gate | up] rows, read by fuse_swiglu
}


@dataclass(frozen=True)
class _Match:
    parent: str  # e.g. "model.layers.0.self_attn"
    rule: tuple[str, ...]
    bias: bool

    def member(self, leaf: str, kind: str) -> str:
        return f"{self.parent}.{leaf}.{kind}"

    def fused(self, kind: str) -> str:
        return f"{self.parent}.{RULES[self.rule]}.{kind}"

    def params(self) -> list[str]:
        kinds = ("weight", "bias") if self.bias else ("weight",)
        return [self.member(leaf, kind) for leaf in self.rule for kind in kinds]


def _split_name(name: str) -> tuple[str, str] | None:
    """'model.layers.0.self_attn.q_proj.weight' -> ('model.layers.0.self_attn', 'q_proj')."""
    parts = name.rsplit(".", 2)
    return (parts[0], parts[1]) if len(parts) == 3 and parts[2] == "weight" else None


def _groups(function: Function) -> list[tuple[_Match, list[Node]]]:
    """Sibling linears matching a rule: same input, weights named <parent>.<leaf>.weight, all or no biases."""
    by_input: dict[tuple[int, str], dict[str, Node]] = {}
    for node in function.nodes:
        if node.op != "linear" or node.inputs[1].kind != PARAM:
            continue
        named = _split_name(node.inputs[1].name)
        if named is not None:
            by_input.setdefault((id(node.inputs[0]), named[0]), {}).setdefault(named[1], node)
    found = []
    for (_, parent), leaves in by_input.items():
        for rule in RULES:
            nodes = [leaves.get(leaf) for leaf in rule]
            if any(n is None for n in nodes):
                continue
            biases = [len(n.inputs) == 3 for n in nodes]
            match = _Match(parent, rule, bias=biases[0])
            if len(set(biases)) == 1 and all(n.inputs[2].name == match.member(leaf, "bias")
                                             for n, leaf in zip(nodes, rule) if match.bias):
                found.append((match, nodes))
    return found


def _fused_param(members: list[Param], name: str) -> Param | None:
    """The concatenation (on rows) of the member parameters, or None if they cannot be concatenated."""
    first = members[0].type
    if any(p.type.dtype != first.dtype or p.type.shape[1:] != first.shape[1:] for p in members):
        return None
    if any(p.info.get("concat_axis", 0) != 0 or "transform" in p.info for p in members):
        return None  # already fused on another axis, or packed: not a plain row concatenation
    sources, shapes = [], []
    for p in members:
        own = p.info.get("sources", [p.name])  # a parameter without sources is read as itself
        sources += own
        if "source_shapes" in p.info:
            shapes += p.info["source_shapes"]
        else:
            shapes += [list(p.type.shape)] if "sources" not in p.info else [None] * len(own)
    info = {"sources": sources, "source_shapes": shapes, "concat_axis": 0}
    shard = {(p.info.get("shard_kind"), p.info.get("shard_axis")) for p in members}
    if len(shard) > 1:
        return None  # tensor parallelism cut the members differently: no one slice of the fused weight
    kind, axis = shard.pop()
    if kind is not None:  # each shard's fused weight is the concatenation of its slices of the members
        info["shard_kind"] = kind
    if axis is not None:
        info["shard_axis"] = axis
    rows = sum(int(p.type.shape[0]) for p in members)
    return Param(name, TensorType((rows,) + first.shape[1:], first.dtype), info)


class FuseParallelLinears:
    name = "fuse_linears"

    def __init__(self, scheme_of: Callable[[Module, Param], str] | None = None) -> None:
        self.scheme_of = scheme_of  # the scheme quantization will give a member: mixed ones are not fused

    def __call__(self, module: Module) -> Module:
        matches = [(f, m, nodes) for f in module.functions.values() for m, nodes in _groups(f)]
        reads = Counter(v.name for _, node in module.iter_nodes() for v in node.inputs if v.kind == PARAM)
        count = Counter(match for _, match, _ in matches)
        # Only groups whose member parameters nobody else reads.
        fusable = {m for m, n in count.items() if all(reads[p] == n for p in m.params())}
        fused: dict[tuple[_Match, str], Param] = {}
        for match in fusable:
            if self.scheme_of is not None and len({self.scheme_of(module, module.params[match.member(leaf, "weight")])
                                                   for leaf in match.rule}) > 1:
                continue  # e.g. a Q4_K_M file's q/k (Q4_K) and v (Q6_K) projections
            kinds = ("weight", "bias") if match.bias else ("weight",)
            made = {k: _fused_param([module.params[match.member(leaf, k)] for leaf in match.rule], match.fused(k))
                    for k in kinds}
            if all(p is not None and p.name not in module.params for p in made.values()):
                fused.update({(match, k): p for k, p in made.items()})
        splices = {id(f): Splice(f) for f in module.functions.values()}
        for function, match, nodes in matches:
            if (match, "weight") in fused:
                self._rewrite(splices[id(function)], match, nodes, fused)
        for splice in splices.values():
            splice.apply()
        self._add_params(module, fused)
        return module

    @staticmethod
    def _rewrite(splice: Splice, match: _Match, nodes: list[Node], fused: dict[tuple[_Match, str], Param]) -> None:
        first = min(nodes, key=splice.function.nodes.index)
        inputs = [nodes[0].inputs[0], _value(fused[match, "weight"])]
        if match.bias:
            inputs.append(_value(fused[match, "bias"]))
        hint = RULES[match.rule].removesuffix("_proj")
        linear = splice.node("linear", inputs, {}, hint=hint)
        sizes = tuple(int(n.outputs[0].type.shape[-1]) for n in nodes)
        split = splice.node("split", linear.outputs, {"sizes": sizes, "axis": -1},
                            outputs=[n.outputs[0] for n in nodes])
        for node in nodes:
            splice.replace(node, [linear, split] if node is first else [])

    @staticmethod
    def _add_params(module: Module, fused: dict[tuple[_Match, str], Param]) -> None:
        """Each fused parameter takes the place of its first member in the argument order."""
        at_first = {match.member(match.rule[0], kind): param for (match, kind), param in fused.items()}
        params: dict[str, Param] = {}
        for name, param in module.params.items():
            if name in at_first:
                params[at_first[name].name] = at_first[name]
            params[name] = param
        module.params = params


def _value(param: Param) -> Value:
    return Value(param.name, param.type, PARAM)
