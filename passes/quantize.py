"""Quantize: choose the storage format of the weights (`--quant`, see QUANT_HELP and quant_schemes.SCHEMES).

Schemes name the weight format only; the compute dtype is the module's activation dtype.
- q0 schemes retype every float parameter (ops that read weights accept any float dtype).
- Quantized schemes rewrite each `linear` / `embedding` whose weight is a parameter (read by nothing else):

      %y = linear(%x, @p.weight, @p.bias?)
        ->  %y = quant_linear(%x, @p.qweight, @p.scales, @p.mins?, @p.bias?, scheme=..., bits, group_size, ...)
      %e = embedding(%ids, @t.weight, dtype=f32)  ->  %e = quant_embedding(%ids, @t.qweight, @t.scales, ...)

  The float parameter becomes its pieces (quant_weights.py makes them from the checkpoint). The embedding table and
  the LM head (the linear named "logits", vocab_size rows; a tied head is the embedding table) take the scheme's edge scheme
  (q8f16 for the 4-bit ones). Other float parameters (norms, biases) keep the compute dtype.
- Mixture-of-experts blocks (ir/ops_moe.py): the three stacked expert weights of a `moe` node are packed per expert
  ([E, N, K] -> qweight [E, N, W], scales [E, N, G]...) with the scheme, and the node becomes `quant_moe`. The router
  (a linear whose weight says info["keep_float"]) is never quantized.

Per-tensor formats: when the weights come from a GGUF file, `module.attrs["source_formats"]` (a SourceFormats) gives
each source tensor's GGUF type. If it says keep_native (no --quant given), every weight keeps its type (every GGUF
type ember reads has a scheme holding it exactly: F32/F16/BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K .. Q6_K), so a
Q4_K_M file stays Q4_K + Q6_K (+ Q5_0/Q8_0 fallbacks) weight by weight. A recipe (quant_recipes.py: q4_k_m, q5_k_m)
also picks a scheme per weight. `member_scheme` tells FuseParallelLinears which siblings would get different schemes,
so that they are not fused (one fused weight has one scheme).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..ir.graph import PARAM, Module, Node, Param, Value
from ..ir.ops_moe import MOE_WEIGHTS, WEIGHT_FORMATS
from ..ir.types import TensorType, is_float
from . import quant_weights  # noqa: F401  (registers the quant_* transforms)
from .materialize import sources_of
from .quant_recipes import RECIPES, layer_count
from .quant_schemes import FLOAT_GGML_TYPES, GGML_TO_SCHEME, SCHEMES, Scheme

from .quant_help import QUANT_HELP  # noqa: E402,F401  (the --quant help text)

EXACT_GGML_TYPES = tuple(GGML_TO_SCHEME)  # every GGUF type ember reads is held exactly by a scheme


@dataclass
class SourceFormats:
    """GGUF type of each source tensor (HF name -> "Q4_1"), and whether weights keep their own type."""

    types: dict[str, str]
    keep_native: bool = False
    elements: dict[str, int] = field(default_factory=dict)  # of matrices, to find the dominant type

    @classmethod
    def of(cls, provider: Any) -> SourceFormats | None:
        """From a weight provider with `formats() -> {name: (ggml type, shape)}` (GGUF files); else None."""
        if not hasattr(provider, "formats"):
            return None
        formats = provider.formats()
        elements = {n: math.prod(shape) for n, (_, shape) in formats.items() if len(shape) >= 2}  # experts: 3-D
        return cls({n: t for n, (t, _) in formats.items()}, elements=elements)

    def dominant_scheme(self) -> str | None:
        """The scheme of the quantized GGUF type holding the most matrix elements (None for float files)."""
        totals: Counter[str] = Counter()
        for name, count in self.elements.items():
            totals[self.types[name]] += count
        quantized = [t for t, _ in totals.most_common() if t not in FLOAT_GGML_TYPES and t in GGML_TO_SCHEME]
        return GGML_TO_SCHEME[quantized[0]] if quantized else None

    def format_of(self, param: Param) -> str | None:
        """"Q4_1" if all sources of `param` share one type, "Q4_1+Q6_K" for mixed ones, None if unknown."""
        types = sorted({self.types[s] for s in sources_of(param) if s in self.types})
        return "+".join(types) if types else None

    def __str__(self) -> str:  # one short line in printed IR
        counts = Counter(self.types.values()).most_common()
        return "GGUF " + " ".join(f"{t}x{n}" for t, n in counts) + (" keep_native" if self.keep_native else "")


def default_quant(formats: SourceFormats | None) -> str | None:
    return formats.dominant_scheme() if formats is not None else None


class Quantize:
    name = "quantize"

    def __init__(self, scheme: str) -> None:
        if scheme not in SCHEMES and scheme not in RECIPES:
            raise ValueError(f"--quant {scheme!r} is not a known scheme (known: {', '.join([*SCHEMES, *RECIPES])})")
        self.label = scheme
        self.recipe = RECIPES.get(scheme)
        self.scheme = SCHEMES[self.recipe.base if self.recipe else scheme]

    def __call__(self, module: Module) -> Module:
        formats = module.attrs.get("source_formats")
        keep_native = formats is not None and formats.keep_native
        uses = _weight_uses(module)
        layers = _layers(module)
        vocab = module.attrs.get("vocab_size")
        if vocab is not None:  # a tensor-parallel LM head holds the shard's rows of the vocabulary
            vocab //= module.attrs.get("tensor_parallel", 1)
        params: dict[str, Param] = {}
        expert_pieces: dict[str, list[Param]] = {}  # stacked expert weight -> its pieces
        for name, param in module.params.items():
            source_format = formats.format_of(param) if formats is not None else None
            if source_format is not None:
                param.info["source_format"] = source_format
            scheme = self._choose(param, uses.get(name, []), vocab, keep_native, layers)
            if _expert_weight(param, uses.get(name)) and (scheme.quantized or self.scheme.quantized):
                # a GGUF file's experts keep their own type (Q4_K gate/up and Q6_K down in a Q4_K_M file); else the
                # requested scheme, or the recipe's
                if not scheme.quantized:
                    scheme = self.scheme
                pieces = _split(param, scheme)
                params.update((p.name, p) for p in pieces)
                expert_pieces[name] = pieces
                continue
            if scheme.quantized and _quantizable(param, uses.get(name)):
                pieces = _split(param, scheme)
                params.update((p.name, p) for p in pieces)
                for node, _ in uses[name]:
                    _rewrite(node, pieces, scheme)
                continue
            if is_float(param.type.dtype) and scheme.float_dtype is not None:
                param.type = TensorType(param.type.shape, scheme.float_dtype)
                param.info["scheme"] = scheme.name
            params[name] = param
        module.params = params
        for _, node in module.iter_nodes():
            if node.op == "moe" and expert_pieces:
                _rewrite_moe(node, [expert_pieces[v.name] for v in node.inputs[2:5]])
        for _, node in module.iter_nodes():
            for value in node.inputs:
                if value.kind == PARAM:
                    value.type = module.params[value.name].type
        module.attrs["quantization"] = self.label
        return module

    def member_scheme(self, module: Module, param: Param) -> str:
        """The scheme a plain (never edge) weight would get: what fusing siblings must agree on."""
        formats = module.attrs.get("source_formats")
        if formats is not None and formats.keep_native:
            source_format = formats.format_of(param)
            if source_format in GGML_TO_SCHEME:
                return GGML_TO_SCHEME[source_format]
        if self.recipe is not None and param.type.ndim == 2:
            return self.recipe.scheme_for(sources_of(param)[0], int(param.type.shape[1]),
                                          _layers(module), head=False)
        return self.scheme.name

    def _choose(self, param: Param, uses: list[tuple[Node, int]], vocab: int | None, keep_native: bool,
                layers: int) -> Scheme:
        source_format = param.info.get("source_format")
        if keep_native and source_format in GGML_TO_SCHEME:
            return SCHEMES[GGML_TO_SCHEME[source_format]]
        if not self.scheme.quantized:
            return self.scheme
        head = any(i == 1 and n.op == "linear" and _is_head(n, vocab) for n, i in uses)
        edge = head or any(i == 1 and n.op == "embedding" for n, i in uses)
        if self.recipe is not None and param.type.ndim in (2, 3):  # 3: stacked experts
            sources = sources_of(param)
            name = sources[0] if len(sources) > 1 else param.name  # ember-fused siblings share one scheme
            return SCHEMES[self.recipe.scheme_for(name, int(param.type.shape[1]), layers, head)]
        return SCHEMES[self.scheme.edge_scheme] if edge else self.scheme


def _is_head(node: Node, vocab: int | None) -> bool:
    """The LM head: the linear the models name "logits" (frontend/models), with vocab_size rows. The row count alone
    would also take an o or down projection of a model whose hidden size equals its vocabulary (tiny configs)."""
    return (node.inputs[1].type.shape[0] == vocab and bool(node.outputs)
            and node.outputs[0].name.split(".")[0] == "logits")


def _layers(module: Module) -> int:
    """The model's layer count for per-layer recipes (a golden truncation records its model's)."""
    return int(module.attrs.get("recipe_layers") or layer_count(list(module.params)))


def _weight_uses(module: Module) -> dict[str, list[tuple[Node, int]]]:
    """Parameter name -> every (node, input index) reading it."""
    uses: dict[str, list[tuple[Node, int]]] = {}
    for _, node in module.iter_nodes():
        for index, value in enumerate(node.inputs):
            if value.kind == PARAM:
                uses.setdefault(value.name, []).append((node, index))
    return uses


def _quantizable(param: Param, uses: list[tuple[Node, int]] | None) -> bool:
    """A float matrix read only as the weight of linear / embedding nodes, not already packed by another pass."""
    return (bool(uses) and param.type.ndim == 2 and is_float(param.type.dtype) and "transform" not in param.info
            and not param.info.get("keep_float")
            and all(node.op in ("linear", "embedding") and index == 1 for node, index in uses))


def _expert_weight(param: Param, uses: list[tuple[Node, int]] | None) -> bool:
    """A stacked float [E, N, K] weight read only as an expert weight of moe nodes."""
    return (bool(uses) and param.type.ndim == 3 and is_float(param.type.dtype) and "transform" not in param.info
            and all(node.op == "moe" and index >= 2 for node, index in uses))


def _split(param: Param, scheme: Scheme) -> list[Param]:
    fmt = scheme.format
    assert fmt is not None
    *lead, rows, cols = (int(d) for d in param.type.shape)  # lead: [E] for stacked expert weights
    base = param.name.removesuffix(".weight")
    info = {k: v for k, v in param.info.items() if k not in ("scheme", "transform")}
    info["sources"] = sources_of(param)
    return [Param(f"{base}.{suffix}", ty, {**info, "transform": quant_weights.PIECES[suffix], "scheme": scheme.name,
                                           "quantized_from": param.name})
            for suffix, ty in zip(fmt.piece_names, [TensorType((*lead, *t.shape), t.dtype)
                                                    for t in fmt.piece_types(rows, cols)])]


def _rewrite(node: Node, pieces: list[Param], scheme: Scheme) -> None:
    fmt = scheme.format
    assert fmt is not None
    weight = node.inputs[1]
    values = [Value(p.name, p.type, PARAM) for p in pieces]
    attrs = {"scheme": scheme.name, **fmt.attrs(), "in_features": int(weight.type.shape[1])}
    if node.op == "linear":
        node.inputs = [node.inputs[0], *values, *node.inputs[2:]]
        node.op, node.attrs = "quant_linear", attrs
    else:
        node.inputs = [node.inputs[0], *values]
        node.op, node.attrs = "quant_embedding", {"dtype": node.attrs.get("dtype", weight.type.dtype), **attrs}


def unquantizable(module: Module) -> list[str]:
    """Weights whose scheme ember cannot make from their source (K-quants from float or other GGUF types)."""
    found = []
    for param in module.params.values():
        scheme = SCHEMES.get(param.info.get("scheme", ""))
        if param.info.get("transform") != "quant_weight" or scheme is None or scheme.format is None:
            continue
        if scheme.format.super_block and param.info.get("source_format") != scheme.ggml_type:
            found.append(f"{param.info['quantized_from']} ({param.info.get('source_format') or 'float'} -> "
                         f"{scheme.name})")
    return found


def _rewrite_moe(node: Node, pieces: list[list[Param]]) -> None:
    """moe(x, logits, gate, up, down) -> quant_moe(x, logits, gate pieces, up pieces, down pieces), with one format
    attr set when the three share a scheme, else one per weight (ir/ops_moe.py WEIGHT_FORMATS)."""
    experts, inter, hidden = (int(d) for d in node.inputs[2].type.shape)
    names = [weight[0].info["scheme"] for weight in pieces]
    schemes = [SCHEMES[n] for n in names]
    values = [Value(p.name, p.type, PARAM) for weight in pieces for p in weight]
    node.inputs = [node.inputs[0], node.inputs[1], *values]
    node.op = "quant_moe"
    first = schemes[0].format
    assert first is not None
    attrs = {**node.attrs, "scheme": names[0], **first.attrs(), "hidden": hidden, "intermediate": inter}
    if len(set(names)) > 1:
        attrs["scheme"] = "+".join(dict.fromkeys(names))
        attrs[WEIGHT_FORMATS] = {w: {"scheme": s.name, **s.format.attrs()}  # type: ignore[union-attr]
                                 for w, s in zip(MOE_WEIGHTS, schemes)}
    node.attrs = attrs


def quantization_notes(module: Module) -> list[str]:
    """One line naming the weights made from quantized GGUF tensors by requantizing (for the manifest's notes)."""
    changed: Counter[str] = Counter()
    for param in module.params.values():
        source, scheme = param.info.get("source_format"), param.info.get("scheme")
        if param.info.get("transform") != "quant_weight" or source is None:
            continue
        if SCHEMES[scheme].ggml_type != source and any(t not in FLOAT_GGML_TYPES for t in source.split("+")):
            changed[f"{source} -> {scheme}"] += 1
    if not changed:
        return []
    return ["requantized from GGUF (dequantized, then quantized again): "
            + ", ".join(f"{n} {what}" for what, n in sorted(changed.items()))]
