"""Tensor parallelism (Megatron-style): every shard runs the same functions on 1/N of the weights.

The rules, by the checkpoint name of the layer that owns a weight (`<parent>.<leaf>.weight`):
    column  q_proj, k_proj, v_proj, gate_proj, up_proj   output rows split: each shard has heads / N query heads,
            kv_heads / N kv heads (its own KV cache) and intermediate / N SwiGLU columns; no communication
    row     o_proj, down_proj   input columns split: y = all_reduce(linear(x_shard, w_shard)) (+ bias, once)
    vocab   embed_tokens, lm_head   rows split: the embedding reads its rows only
            (e = all_reduce(embedding(local, w) * mask), local, mask = vocab_shard(ids, @start)) and the LM head
            makes its slice of the logits (all_gather on the vocabulary axis); a tied head is the same rows
    replicated  every 1-D weight (norms)
Any other weight is refused by name, so an architecture without rules (fused checkpoints, experts) never
compiles to a wrong split. Runs first, on the traced float IR: fusion then concatenates each shard's own q/k/v
and gate/up slices, and quantization packs the slices, so groups never straddle a shard (checked by
`check_quantized_shards`). Each parameter records how it is cut (info["shard_axis"], info["shard_kind"]);
passes/materialize.py slices every source tensor on that axis for the shard being written.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..ir.graph import PARAM, Function, Module, Node, Param, Value
from ..ir.ops import infer_types
from ..ir.types import TensorType
from .rewrite import Splice

COLUMN, ROW, VOCAB, REPLICATED, RANK = "column", "row", "vocab", "replicated", "rank"

RULES: dict[str, str] = {
    "q_proj": COLUMN, "k_proj": COLUMN, "v_proj": COLUMN,  # attention heads
    "gate_proj": COLUMN, "up_proj": COLUMN,  # SwiGLU / GeGLU columns
    "o_proj": ROW, "down_proj": ROW,  # partial sums, all-reduced
    "embed_tokens": VOCAB, "lm_head": VOCAB,  # vocabulary rows
}
AXIS = {COLUMN: 0, VOCAB: 0, ROW: 1}  # the weight axis each kind splits (a bias follows its rows)
VOCAB_START = "model.embed_tokens.shard_start"  # int32[1]: the first vocabulary row this shard holds
SHARDED_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size")


def check_divisible(config: Any, shards: int) -> None:
    """One line naming the first config field that N shards cannot split evenly."""
    if shards == 1:
        return
    for field in SHARDED_FIELDS:
        value = getattr(config, field)
        if value % shards:
            raise ConfigError.about(f"{{tensor_parallel}} {shards}: config field {field!r} ({value}) is not "
                                    f"divisible by {shards}")


def _kind(param: Param) -> str:
    parts = param.name.split(".")
    leaf = parts[-2] if len(parts) >= 2 and parts[-1] in ("weight", "bias") else None
    if leaf in RULES and (param.type.ndim == 2 or parts[-1] == "bias"):
        kind = RULES[leaf]
        return REPLICATED if kind == ROW and parts[-1] == "bias" else kind  # a row bias is added after the sum
    if param.type.ndim == 1:
        return REPLICATED
    raise ConfigError.about(f"{{tensor_parallel}}: ember has no tensor-parallel rule for parameter {param.name} "
                            f"({param.type}); sharded layers: {', '.join(RULES)}")


def _cut(ty: TensorType, axis: int, shards: int, name: str) -> TensorType:
    size = ty.shape[axis]
    if not isinstance(size, int) or size % shards:
        raise ConfigError.about(f"{{tensor_parallel}} {shards}: parameter {name} {ty} cannot be split in {shards} "
                                f"on axis {axis}")
    shape = list(ty.shape)
    shape[axis] = size // shards
    return TensorType(tuple(shape), ty.dtype)


def _reshape_target(old_in: tuple, new_in: tuple, target: tuple, shards: int) -> tuple:
    """A reshape's target after its input shrank: the first dim past the shared prefix (heads, or heads * dim)
    shrinks by the same factor."""
    if old_in == new_in:
        return target
    prefix = 0
    while prefix < min(len(old_in), len(target)) and old_in[prefix] == target[prefix]:
        prefix += 1
    dims = list(target)
    if prefix == len(dims) or not isinstance(dims[prefix], int) or dims[prefix] % shards:
        raise ConfigError.about(f"{{tensor_parallel}} {shards}: cannot shard the reshape {list(old_in)} -> "
                                f"{list(target)}")
    dims[prefix] //= shards
    return tuple(dims)


class ShardTensorParallel:
    name = "shard_tensor_parallel"

    def __init__(self, shards: int) -> None:
        self.shards = shards

    def __call__(self, module: Module) -> Module:
        n = self.shards
        kinds = {name: _kind(p) for name, p in module.params.items()}
        for name, param in module.params.items():
            kind = kinds[name]
            param.info["shard_kind"] = kind
            if kind != REPLICATED:
                axis = AXIS[kind] if param.type.ndim == 2 else 0
                param.info["shard_axis"] = axis
                param.type = _cut(param.type, axis, n, name)
        for function in module.functions.values():
            self._rewrite(module, function, kinds)
        kv = module.kv_cache
        if kv is not None:
            kv.num_attention_heads //= n
            kv.num_kv_heads //= n
        module.attrs["tensor_parallel"] = n
        return module

    def _rewrite(self, module: Module, function: Function, kinds: dict[str, str]) -> None:
        n, splice = self.shards, Splice(function)
        old_types = {id(v): v.type for node in function.nodes for v in node.outputs}
        for node in function.nodes:
            for value in node.inputs:
                if value.kind == PARAM:
                    value.type = module.params[value.name].type
            if node.op == "reshape":
                source = node.inputs[0]
                node.attrs["shape"] = _reshape_target(old_types.get(id(source), source.type).shape,
                                                      source.type.shape, tuple(node.attrs["shape"]), n)
            weight = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1].kind == PARAM else None
            kind = kinds.get(weight.name) if weight is not None else None
            if node.op == "embedding" and kind == VOCAB:
                splice.replace(node, self._embedding(module, splice, node))
                continue
            if node.op == "linear" and kind == ROW:  # the output keeps its type: the sum is the whole product
                splice.replace(node, self._row_linear(splice, node))
            elif node.op == "linear" and kind == VOCAB:  # the output keeps its type: all the logits
                splice.replace(node, self._gather(splice, node))
            else:
                for value, ty in zip(node.outputs, infer_types(node.op, [v.type for v in node.inputs], node.attrs)):
                    value.type = ty
        splice.apply()

    def _row_linear(self, splice: Splice, node: Node) -> list[Node]:
        """y = linear(x, w, b) -> all_reduce(linear(x, w)) + b: the bias is added once, after the sum."""
        out = node.outputs[0]
        partial = splice.node("linear", node.inputs[:2], {}, hint=f"{out.name}.partial")
        if len(node.inputs) == 2:
            return [partial, splice.node("all_reduce", partial.outputs, self._attrs(op="sum"), outputs=[out])]
        reduced = splice.node("all_reduce", partial.outputs, self._attrs(op="sum"), hint=f"{out.name}.sum")
        return [partial, reduced, splice.node("add", [reduced.outputs[0], node.inputs[2]], {}, outputs=[out])]

    def _gather(self, splice: Splice, node: Node) -> list[Node]:
        """The LM head's slice of the vocabulary -> the whole logits on every shard."""
        out = node.outputs[0]
        local = splice.node("linear", node.inputs, {}, hint=f"{out.name}.shard")
        return [local, splice.node("all_gather", local.outputs, self._attrs(), outputs=[out])]

    def _embedding(self, module: Module, splice: Splice, node: Node) -> list[Node]:
        ids, weight = node.inputs
        rows = int(weight.type.shape[0])
        start = module.params.setdefault(VOCAB_START, Param(VOCAB_START, TensorType((1,), "int32"), {
            "sources": [], "source_shapes": [], "shard_kind": RANK, "shard_value": {"rows": rows}}))
        out = node.outputs[0]
        view = splice.node("vocab_shard", [ids, Value(start.name, start.type, PARAM)],
                           {"rows": rows, "dtype": out.type.dtype}, hint="vocab")
        local, mask = view.outputs
        rows_out = splice.node("embedding", [local, weight], dict(node.attrs), hint=f"{out.name}.shard")
        masked = splice.node("mul", [rows_out.outputs[0], mask], {}, hint=f"{out.name}.masked")
        reduced = splice.node("all_reduce", masked.outputs, self._attrs(op="sum"), outputs=[out])
        return [view, rows_out, masked, reduced]

    def _attrs(self, **extra: Any) -> dict[str, Any]:
        return {"shards": self.shards, **extra}


def shard_layout(module: Module) -> dict[str, str]:
    """Parameter name -> how it is cut (column / row / vocab / replicated / rank), for the manifest."""
    return {name: p.info.get("shard_kind", REPLICATED) for name, p in module.params.items()}


def check_quantized_shards(module: Module, quant: str) -> None:
    """After quantization: a packed weight split on its input axis must hold whole groups (and super blocks) on
    every shard, so that each shard's pieces are exactly its slice of the unsharded packing."""
    from ..ir.ops_quant import QuantFormat

    shards = module.attrs.get("tensor_parallel", 1)
    for _, node in module.iter_nodes():
        if node.op not in ("quant_linear", "quant_embedding"):
            continue
        piece = module.params[node.inputs[1].name]
        if piece.info.get("shard_axis") != 1:
            continue
        fmt, cols = QuantFormat.from_attrs(node.attrs), int(node.attrs["in_features"])
        block = max(fmt.group_size, fmt.super_block)
        if cols % block:
            raise ConfigError.about(f"--quant {quant} with {{tensor_parallel}} {shards}: "
                                    f"{piece.info.get('quantized_from', piece.name)} has {cols} input features per "
                                    f"shard, not a multiple of its {block}-value groups (a group would straddle two "
                                    "shards)")
