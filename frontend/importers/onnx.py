"""A decoder-only LLM exported to ONNX (torch.onnx, either exporter; the optimum layout with past key values as
inputs and present key values as outputs; weights inline or in external data) as a model source.

The graph is not translated op by op: the importer recognizes a Llama-family decoder in it by structure and hands
ember's own model definition (frontend/models/) a config and the weights under their Hugging Face names, as the HF
folder and GGUF paths do, so the compiled model gets ember's paged KV cache and kernels. What is matched, from the
token embedding on:

- the token embedding: a Gather from a [vocab, hidden] initializer indexed by a graph input;
- RMSNorm: x * rsqrt(mean(x^2) + eps) * w in any of its exported spellings (Pow or Mul for the square, Reciprocal of
  Sqrt, Div by Sqrt, Pow -0.5), or a SimplifiedLayerNormalization / RMSNormalization node; eps from its constant;
- linear layers: MatMul by an initializer (torch stores it [in, out]; a Transpose of an [out, in] one is read as
  such), Gemm, and an Add of a 1-D initializer right after as the bias;
- each decoder layer: a norm of the residual stream read by three projections whose roles come from where they go
  (q is the left operand of the score MatMul, k its right one, v the right operand of the MatMul after the
  Softmax), optional per-head norms on q and k (Qwen3), rotary embeddings (rotate-half: Slice, Neg, Concat) on both,
  the projection after attention added to the residual, then a second norm read by two projections: gate (through
  Sigmoid and Mul: SiLU) times up, into the down projection added to the residual;
- after the last layer: a norm and the projection whose output is a graph output (the logits); tied embeddings
  when it reads the embedding's own initializer;
- rope theta from the inverse frequencies the graph multiplies the positions by (the inv_freq constant before the
  Cos), head_dim from their count, checked against the attention's scale.

A config.json beside the file (the optimum layout writes one) supplies what a graph cannot show: the context
length, the token ids, llama3 rope scaling and a sliding window; its structural fields must agree with the graph.
Initializer names are not trusted (the exporters rename, fold transposes into new tensors and merge equal ones).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ...errors import ModelFormatError
from ..config import ModelConfig
from ..source import ModelSource
from .onnx_graph import Graph, TensorStore, attribute, label

# ops of graphs that an optimizer or another exporter has rewritten beyond what the patterns read
REFUSED_OPS = {
    "LayerNormalization": "a layer norm with mean subtraction and bias (GPT-2 style)",
    "SkipLayerNormalization": "a layer norm with mean subtraction and bias (GPT-2 style)",
    "SkipSimplifiedLayerNormalization": "onnxruntime's fused residual + RMSNorm (export without ORT optimizations)",
    "GroupQueryAttention": "onnxruntime's fused attention (export without ORT optimizations)",
    "MultiHeadAttention": "onnxruntime's fused attention (export without ORT optimizations)",
    "Attention": "a fused attention node (export with opset < 23 or without fusions)",
    "RotaryEmbedding": "a fused rotary embedding node",
    "MatMulNBits": "a quantized ONNX linear (import the float model and let ember quantize it: --quant)",
    "DequantizeLinear": "a quantized ONNX tensor (import the float model and let ember quantize it: --quant)",
    "MatMulInteger": "a quantized ONNX linear (import the float model and let ember quantize it: --quant)",
    "Gelu": "a GELU MLP (ember's MLP is SwiGLU)",
    "FastGelu": "a GELU MLP (ember's MLP is SwiGLU)",
}
STRUCTURAL = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim")
FROM_CONFIG_JSON = ("max_position_embeddings", "bos_token_id", "eos_token_id", "rope_scaling", "rope_parameters",
                    "sliding_window", "layer_types", "use_sliding_window", "max_window_layers")


@dataclass(frozen=True)
class Ref:
    """An HF tensor as an initializer: `transpose` when it is stored [in, out]."""

    init: str
    transpose: bool = False


@dataclass
class Linear:
    node: onnx.NodeProto
    x: str
    weight: Ref
    shape: tuple[int, int]  # HF layout: (out, in)
    bias: str | None
    out: str


@dataclass
class Norm:
    node: onnx.NodeProto
    x: str
    weight: str
    eps: float
    dim: int
    out: str


class Recognizer:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        for node in graph.nodes:
            if node.op_type in REFUSED_OPS:
                raise graph.error(f"{label(node)}: {REFUSED_OPS[node.op_type]} is not recognized")
            if node.op_type == "Sub" and any(self._producer_op(x) == "ReduceMean" for x in node.input):
                raise graph.error(f"{label(node)}: x - mean(x) (a layer norm with mean subtraction, GPT-2 style) "
                                  "is not recognized; ember imports RMSNorm decoders (llama, qwen2, qwen3)")
        self.linears: dict[str, Linear] = {}
        self.linears_of: dict[str, list[Linear]] = defaultdict(list)
        self.norm_at: dict[str, Norm] = {}  # final Mul node name -> norm
        self.norms_of: dict[str, list[Norm]] = defaultdict(list)
        for node in graph.nodes:
            lin = self._linear(node)
            if lin is not None:
                self.linears[id(node)] = lin
                self.linears_of[lin.x].append(lin)
            norm = self._norm(node)
            if norm is not None:
                self.norm_at[id(node)] = norm
                self.norms_of[norm.x].append(norm)

    def _producer_op(self, value: str) -> str | None:
        node = self.g.producer.get(self.g.canon(value))
        return node.op_type if node is not None else None

    def _produced(self, value: str, *ops: str) -> onnx.NodeProto | None:
        node = self.g.producer.get(self.g.canon(value))
        return node if node is not None and node.op_type in ops else None

    # ---- linear layers ------------------------------------------------------------------------------------------
    def _linear(self, node: onnx.NodeProto) -> Linear | None:
        g = self.g
        if node.op_type == "MatMul":
            w = g.weight(node.input[1])
            if w is None or len(g.inits[w[0]].dims) != 2:
                return None
            name, b_transposed = w
            bias = None
        elif node.op_type == "Gemm":
            w = g.weight(node.input[1])
            if w is None or len(g.inits[w[0]].dims) != 2:
                return None
            if attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0 \
                    or attribute(node, "beta", 1.0) != 1.0:
                raise g.error(f"{label(node)}: a Gemm with transA, alpha or beta is not recognized as a linear layer")
            name, b_transposed = w[0], w[1] ^ bool(attribute(node, "transB", 0))
            bias = g.weight(node.input[2])[0] if len(node.input) > 2 and node.input[2] else None
        else:
            return None
        dims = tuple(int(d) for d in g.inits[name].dims)
        hf_transpose = not b_transposed  # HF keeps [out, in]; the MatMul's right operand is [in, out]
        shape = (dims[1], dims[0]) if hf_transpose else dims
        out = node.output[0]
        if bias is None:
            uses = g.uses(out)
            if len(uses) == 1 and uses[0][0].op_type == "Add":
                add = uses[0][0]
                other = g.weight(add.input[1 - uses[0][1]])
                if other is not None and not other[1] and tuple(g.inits[other[0]].dims) == (shape[0],):
                    bias, out = other[0], add.output[0]
        return Linear(node, g.canon(node.input[0]), Ref(name, hf_transpose), shape, bias, out)

    # ---- RMSNorm ------------------------------------------------------------------------------------------------
    def _norm(self, node: onnx.NodeProto) -> Norm | None:
        g = self.g
        if node.op_type in ("SimplifiedLayerNormalization", "RMSNormalization"):
            w = g.weight(node.input[1])
            if w is None or w[1] or attribute(node, "axis", -1) != -1:
                return None
            return Norm(node, g.canon(node.input[0]), w[0], float(attribute(node, "epsilon", 1e-5)),
                        int(g.inits[w[0]].dims[0]), node.output[0])
        if node.op_type != "Mul":
            return None
        for side in (0, 1):
            w = g.weight(node.input[side])
            if w is None or w[1] or len(g.inits[w[0]].dims) != 1:
                continue
            matched = self._normalized(node.input[1 - side])
            if matched is not None:
                x, eps = matched
                return Norm(node, x, w[0], eps, int(g.inits[w[0]].dims[0]), node.output[0])
        return None

    def _normalized(self, value: str) -> tuple[str, float] | None:
        """(x, eps) when `value` is x * rsqrt(mean(x^2) + eps) or x / sqrt(mean(x^2) + eps)."""
        g = self.g
        node = self._produced(value, "Mul", "Div")
        if node is None:
            return None
        if node.op_type == "Div":
            sqrt = self._produced(node.input[1], "Sqrt")
            return self._mean_square(node.input[0], sqrt.input[0]) if sqrt is not None else None
        for side in (0, 1):
            r = self._produced(node.input[side], "Reciprocal", "Div", "Pow")
            if r is None:
                continue
            if r.op_type == "Pow":
                inner = r.input[0] if g.scalar(r.input[1]) == -0.5 else None
            else:
                if r.op_type == "Div" and g.scalar(r.input[0]) != 1.0:
                    continue
                sqrt = self._produced(r.input[-1], "Sqrt")
                inner = sqrt.input[0] if sqrt is not None else None
            if inner is not None:
                found = self._mean_square(node.input[1 - side], inner)
                if found is not None:
                    return found
        return None

    def _mean_square(self, x: str, value: str) -> tuple[str, float] | None:
        g = self.g
        add = self._produced(value, "Add")
        if add is None:
            return None
        for side in (0, 1):
            eps = g.scalar(add.input[side])
            mean = self._produced(add.input[1 - side], "ReduceMean")
            if eps is None or mean is None or attribute(mean, "keepdims", 1) != 1:
                continue
            axes = attribute(mean, "axes")
            if axes is None and len(mean.input) > 1:
                axes = g.const(mean.input[1])
            if axes is None or [int(a) for a in np.asarray(axes).reshape(-1)] != [-1]:
                continue
            square = self._produced(mean.input[0], "Pow", "Mul")
            if square is None:
                continue
            if square.op_type == "Pow" and g.scalar(square.input[1]) != 2.0:
                continue
            if square.op_type == "Mul" and g.canon(square.input[0]) != g.canon(square.input[1]):
                continue
            if g.canon(square.input[0]) == g.canon(x):
                return g.canon(x), eps
        return None

    # ---- data flow ----------------------------------------------------------------------------------------------
    def follow(self, value: str, stop, limit: int = 400) -> tuple[tuple[onnx.NodeProto, int] | None, list]:
        """Breadth-first over the nodes reading `value` as data, until `stop(node, index)` holds; returns that
        (node, index) or None, and the nodes passed on the way. Linear layers are not crossed."""
        seen, passed, queue = set(), [], [value]
        while queue and len(seen) < limit:
            current = queue.pop(0)
            for node, index in self.g.data_users(current):
                if stop(node, index):
                    return (node, index), passed
                if id(node) in seen or id(node) in self.linears:
                    continue
                seen.add(id(node))
                passed.append(node)
                queue.extend(node.output)
        return None, passed

    def bare_matmul(self, node: onnx.NodeProto, index: int) -> bool:
        return node.op_type == "MatMul" and id(node) not in self.linears

    def norm_of(self, residual: str, where: str) -> Norm:
        norms = self.norms_of.get(residual, [])
        if len(norms) != 1:
            node = self.g.producer.get(residual)
            after = label(node) if node is not None else f"input {residual!r}"
            found = "no RMSNorm" if not norms else f"{len(norms)} RMSNorms"
            raise self.g.error(f"{where}: {found} of the residual stream after {after} (the pattern "
                               "x * rsqrt(mean(x^2) + eps) * w was not recognized)")
        return norms[0]

    def residual_add(self, residual: str, lin: Linear, where: str, what: str) -> str:
        for node, index in self.g.uses(lin.out):
            if node.op_type == "Add" and self.g.canon(node.input[1 - index]) == residual:
                return node.output[0]
        raise self.g.error(f"{where}: the {what} {label(lin.node)} is not added to the residual stream "
                           "(a norm after it, as in Gemma, is not recognized)")


def recognize(graph: Graph) -> tuple[dict, dict[str, Ref], list[str]]:
    """(config.json-style dict, HF name -> initializer, notes) of the decoder in `graph`."""
    r = Recognizer(graph)
    g = graph
    embed = None
    for node in g.nodes:
        if node.op_type == "Gather" and g.canon(node.input[1]) in g.inputs:
            w = g.weight(node.input[0])
            if w is not None and not w[1] and len(g.inits[w[0]].dims) == 2:
                embed = (node, w[0])
                break
    if embed is None:
        raise g.error("no token embedding (a Gather from a [vocab, hidden] initializer indexed by a graph input) "
                      "was recognized")
    vocab, hidden = (int(d) for d in g.inits[embed[1]].dims)
    names: dict[str, Ref] = {"model.embed_tokens.weight": Ref(embed[1])}
    residual = g.canon(embed[0].output[0])
    layers: list[dict] = []
    norms: list[Norm] = []
    while True:
        where = f"layer {len(layers)}"
        norm = r.norm_of(residual, where)
        norms.append(norm)
        readers = r.linears_of.get(g.canon(norm.out), [])
        if len(readers) == 1 and any(g.canon(o) == readers[0].out for o in g.outputs):
            head = readers[0]
            break
        layer, residual = _layer(r, len(layers), residual, norm, readers, hidden)
        layers.append(layer)
        norms.extend(layer["norms"])
        prefix = f"model.layers.{len(layers) - 1}."
        names.update({prefix + k: v for k, v in layer["names"].items()})
    if not layers:
        raise g.error(f"no decoder layer: the embedding's norm {label(norms[0].node)} goes straight to the logits")
    if head.shape != (vocab, hidden) or head.bias is not None:
        raise g.error(f"{label(head.node)}: the output projection is {head.shape[0]}x{head.shape[1]}"
                      f"{' with a bias' if head.bias else ''}, expected {vocab}x{hidden} (vocab x hidden) "
                      "without a bias")
    names["model.norm.weight"] = Ref(norms[-1].weight)
    tied = head.weight.init == embed[1] and not head.weight.transpose
    if not tied:
        names["lm_head.weight"] = head.weight
    first = layers[0]
    for i, layer in enumerate(layers[1:], 1):
        for key in ("heads_dims", "intermediate", "bias", "qk_norm"):
            if layer[key] != first[key]:
                raise g.error(f"layer {i}: {key.replace('_', ' ')} {layer[key]} differs from layer 0's "
                              f"{first[key]} (ember compiles one shape for every layer)")
    epsilons = sorted({float(np.float32(n.eps)) for n in norms})
    if len(epsilons) > 1:
        raise g.error(f"the RMSNorms use different epsilons {epsilons} (ember takes one rms_norm_eps)")
    head_dim, theta, rope_note = _rope(r, layers)
    q_out, kv_out = first["heads_dims"]
    for what, size in (("query", q_out), ("key/value", kv_out)):
        if size % head_dim:
            raise g.error(f"layer 0: the {what} projection's {size} outputs are not a whole number of heads of "
                          f"head_dim {head_dim} (from the rotary frequencies)")
    if first["qk_norm"] and first["qk_norm"] != head_dim:
        raise g.error(f"layer 0: the q/k norms have {first['qk_norm']} weights, head_dim is {head_dim}")
    for i, layer in enumerate(layers):
        scale = layer["scale"]
        if scale is not None and not math.isclose(scale, head_dim ** -0.5, rel_tol=1e-4):
            raise g.error(f"layer {i}: the attention scale {scale:.6g} is not 1/sqrt(head_dim {head_dim}) = "
                          f"{head_dim ** -0.5:.6g}")
    bias = first["bias"]
    model_type = "qwen3" if first["qk_norm"] else "qwen2" if bias == "qkv" else "llama"
    raw = dict(model_type=model_type, vocab_size=vocab, hidden_size=hidden, intermediate_size=first["intermediate"],
               num_hidden_layers=len(layers), num_attention_heads=q_out // head_dim,
               num_key_value_heads=kv_out // head_dim, head_dim=head_dim,
               rms_norm_eps=float(f"{epsilons[0]:.6g}"), rope_theta=theta, tie_word_embeddings=tied,
               attention_bias=bias == "qkvo", hidden_act="silu")
    notes = [rope_note] if rope_note else []
    return raw, names, notes


def _layer(r: Recognizer, i: int, residual: str, norm: Norm, readers: list[Linear], hidden: int):
    g = r.g
    where = f"layer {i}"
    if len(readers) != 3:
        if len(readers) == 1:
            raise g.error(f"{where}: one projection {label(readers[0].node)} reads the attention norm: a fused "
                          "q/k/v projection is not recognized (ember reads q, k and v as three MatMuls)")
        raise g.error(f"{where}: {len(readers)} projections read the attention norm {label(norm.node)}, expected "
                      "three (q, k, v)")
    reached = {}
    for lin in readers:
        hit, passed = r.follow(lin.out, r.bare_matmul)
        if hit is None:
            raise g.error(f"{where}: the projection {label(lin.node)} reaches no attention MatMul")
        reached[id(lin)] = (hit, passed)
    lefts = [lin for lin in readers if reached[id(lin)][0][1] == 0]
    if len(lefts) != 1:
        raise g.error(f"{where}: the attention pattern (MatMul of q and k, Softmax, MatMul by v) was not "
                      f"recognized after {label(norm.node)}: {len(lefts)} projections are left operands")
    q = lefts[0]
    score = reached[id(q)][0][0]
    ks = [lin for lin in readers if reached[id(lin)][0] == (score, 1)]
    context_hit, after_score = r.follow(score.output[0], r.bare_matmul, limit=40)
    vs = [lin for lin in readers if context_hit is not None and reached[id(lin)][0] == (context_hit[0], 1)]
    if len(ks) != 1 or len(vs) != 1 or context_hit[1] != 0 or \
            not any(n.op_type == "Softmax" for n in after_score):
        raise g.error(f"{where}: the attention pattern (MatMul of q and k, Softmax, MatMul by v) was not recognized "
                      f"at {label(score)}")
    if any(n.op_type == "Tanh" for n in after_score):
        raise g.error(f"{where}: {label(score)}: soft-capped attention scores (Tanh) are not recognized")
    k, v, context = ks[0], vs[0], context_hit[0]
    heads_dims = (q.shape[0], k.shape[0])
    for lin, what in ((q, "q"), (k, "k"), (v, "v")):
        if lin.shape[1] != hidden:
            raise g.error(f"{where}: the {what} projection {label(lin.node)} reads {lin.shape[1]} features, "
                          f"hidden size is {hidden}")
    if v.shape != k.shape:
        raise g.error(f"{where}: the v projection {label(v.node)} is {v.shape[0]}x{v.shape[1]}, the k projection "
                      f"{k.shape[0]}x{k.shape[1]}")
    head_norms = {}
    for lin, what in ((q, "q"), (k, "k")):
        passed = reached[id(lin)][1]
        if not any(n.op_type == "Neg" for n in passed) or not any(n.op_type == "Slice" for n in passed):
            raise g.error(f"{where}: no rotary embedding (rotate-half: Slice, Neg, Concat, Mul by cos/sin) on the "
                          f"{what} path from {label(lin.node)}")
        found = [r.norm_at[id(n)] for n in passed if id(n) in r.norm_at]
        if len(found) > 1:
            raise g.error(f"{where}: {len(found)} norms on the {what} path from {label(lin.node)}")
        head_norms[what] = found[0] if found else None
    if (head_norms["q"] is None) != (head_norms["k"] is None):
        raise g.error(f"{where}: a per-head norm on only one of q and k is not recognized")
    hit, _ = r.follow(context.output[0], lambda n, idx: id(n) in r.linears and idx == 0)
    if hit is None:
        raise g.error(f"{where}: no output projection after the attention {label(context)}")
    o = r.linears[id(hit[0])]
    if o.shape != (hidden, q.shape[0]):
        raise g.error(f"{where}: the output projection {label(o.node)} is {o.shape[0]}x{o.shape[1]}, expected "
                      f"{hidden}x{q.shape[0]}")
    residual = g.canon(r.residual_add(residual, o, where, "attention output projection"))
    norm2 = r.norm_of(residual, where)
    mlp = r.linears_of.get(g.canon(norm2.out), [])
    if len(mlp) != 2:
        what = "a fused gate/up projection is not recognized" if len(mlp) == 1 else \
            f"{len(mlp)} projections read it, expected two (gate, up)"
        raise g.error(f"{where}: after the MLP norm {label(norm2.node)}: {what}")
    gate = up = product = None
    for cand, other in ((mlp[0], mlp[1]), (mlp[1], mlp[0])):
        for node, _ in g.uses(cand.out):
            if node.op_type in ("Erf", "Tanh", "Gelu"):
                raise g.error(f"{where}: {label(node)}: a GELU MLP is not recognized (ember's MLP is SwiGLU)")
            if node.op_type != "Sigmoid":
                continue
            silu = [n for n, _ in g.uses(node.output[0]) if n.op_type == "Mul" and
                    {g.canon(x) for x in n.input} == {g.canon(cand.out), g.canon(node.output[0])}]
            for s in silu:
                for m, idx in g.uses(s.output[0]):
                    if m.op_type == "Mul" and g.canon(m.input[1 - idx]) == g.canon(other.out):
                        gate, up, product = cand, other, m.output[0]
    if gate is None:
        raise g.error(f"{where}: the MLP after {label(norm2.node)} is not SwiGLU (silu(gate) * up: Sigmoid, Mul, "
                      "Mul) or was not recognized")
    downs = r.linears_of.get(g.canon(product), [])
    if len(downs) != 1:
        raise g.error(f"{where}: no down projection (a MatMul) reads silu(gate) * up")
    down = downs[0]
    inter = gate.shape[0]
    if up.shape != gate.shape or gate.shape[1] != hidden or down.shape != (hidden, inter):
        raise g.error(f"{where}: the MLP's shapes (gate {gate.shape}, up {up.shape}, down {down.shape}) do not "
                      f"fit hidden size {hidden}")
    for lin, what in ((gate, "gate"), (up, "up"), (down, "down")):
        if lin.bias is not None:
            raise g.error(f"{where}: the {what} projection {label(lin.node)} has a bias (mlp_bias is not "
                          "implemented)")
    residual = g.canon(r.residual_add(residual, down, where, "down projection"))
    biased = "".join(x for x, lin in zip("qkvo", (q, k, v, o)) if lin.bias is not None)
    if biased not in ("", "qkv", "qkvo"):
        raise g.error(f"{where}: biases on the {', '.join(biased)} projections only are not recognized (ember "
                      "reads none, q/k/v, or q/k/v/o)")
    names = {"input_layernorm.weight": Ref(norm.weight), "post_attention_layernorm.weight": Ref(norm2.weight)}
    for lin, key in ((q, "self_attn.q_proj"), (k, "self_attn.k_proj"), (v, "self_attn.v_proj"),
                     (o, "self_attn.o_proj"), (gate, "mlp.gate_proj"), (up, "mlp.up_proj"),
                     (down, "mlp.down_proj")):
        names[key + ".weight"] = lin.weight
        if lin.bias is not None:
            names[key + ".bias"] = Ref(lin.bias)
    extra = []
    if head_norms["q"] is not None:
        names["self_attn.q_norm.weight"] = Ref(head_norms["q"].weight)
        names["self_attn.k_norm.weight"] = Ref(head_norms["k"].weight)
        extra = [head_norms["q"], head_norms["k"]]
        if head_norms["q"].dim != head_norms["k"].dim:
            raise g.error(f"{where}: the q and k norms differ in size")
    layer = dict(names=names, norms=[norm2, *extra], heads_dims=heads_dims, intermediate=inter, bias=biased,
                 qk_norm=head_norms["q"].dim if head_norms["q"] is not None else 0,
                 scale=_attention_scale(r, score), rope=(reached[id(q)][1], reached[id(k)][1]))
    return layer, residual


def _attention_scale(r: Recognizer, score: onnx.NodeProto) -> float | None:
    """The product of the scalar factors on q and k before their MatMul and on the scores before the Softmax."""
    g = r.g
    scale = 1.0

    def factor(node: onnx.NodeProto) -> tuple[float, str] | None:
        if node.op_type not in ("Mul", "Div"):
            return None
        for side in (0, 1) if node.op_type == "Mul" else (1,):
            c = g.scalar(node.input[side])
            if c is not None and g.const(node.input[1 - side]) is None:
                return (c if node.op_type == "Mul" else 1.0 / c), node.input[1 - side]
        return None

    for operand in score.input:  # backwards through layout ops and scalar factors
        value = operand
        for _ in range(16):
            node = g.producer.get(g.canon(value))
            if node is None:
                break
            f = factor(node)
            if f is not None:
                scale, value = scale * f[0], f[1]
            elif node.op_type in ("Transpose", "Reshape", "Expand", "Unsqueeze", "Squeeze"):
                value = node.input[0]
            else:
                break
    value = score.output[0]
    for _ in range(16):  # forwards to the Softmax
        uses = g.data_users(value)
        if len(uses) != 1:
            return None
        node = uses[0][0]
        if node.op_type == "Softmax":
            return scale
        f = factor(node)
        if f is not None:
            scale *= f[0]
        elif node.op_type not in ("Add", "Where", "Sub"):
            return None
        value = node.output[0]
    return None


def _rope(r: Recognizer, layers: list[dict]) -> tuple[int, float, str]:
    """(head_dim, theta, note) from the inverse frequencies before the graph's Cos nodes."""
    g = r.g
    cosines = [n for n in g.nodes if n.op_type == "Cos"]
    if not cosines:
        raise g.error("rotary embedding: no Cos node computes the rotation angles (precomputed cos/sin tables are "
                      "not recognized)")
    found = []
    for cos in cosines:
        inv = _inverse_frequencies(g, cos.input[0])
        if inv is None:
            raise g.error(f"rotary embedding: {label(cos)}: no inverse-frequency constant (inv_freq) found before it")
        for node, _ in g.uses(cos.output[0]):
            c = g.scalar(node.input[1]) if node.op_type == "Mul" else None
            if c is None and node.op_type == "Mul":
                c = g.scalar(node.input[0])
            if c is not None and c != 1.0:
                raise g.error(f"rotary embedding: {label(node)} scales cos by {c:.6g} (YaRN / LongRoPE attention "
                              "factors are not recognized)")
        found.append(inv)
    inv = found[0]
    if any(f.shape != inv.shape or not np.allclose(f, inv, rtol=1e-6) for f in found[1:]):
        raise g.error("rotary embedding: the Cos nodes use different frequencies (per-layer rope is not recognized)")
    half = inv.size
    head_dim = 2 * half
    if half < 2:
        return head_dim, 10000.0, ""
    exponents = 2.0 * np.arange(half) / head_dim
    log_theta = -float(np.dot(np.log(inv.astype(np.float64)), exponents) / np.dot(exponents, exponents))
    theta = math.exp(log_theta)
    if abs(theta - round(theta)) <= 1e-4 * theta:
        theta = float(round(theta))
    return head_dim, theta, ""


def _inverse_frequencies(g: Graph, value: str) -> np.ndarray | None:
    """The float constant of values in (0, 1] among the producers of `value` (the angles position * inv_freq)."""
    seen, queue = set(), [value]
    while queue and len(seen) < 32:
        current = queue.pop(0)
        array = g.const(current)
        if array is not None and array.dtype.kind == "f" and array.size >= 2 and max(array.shape) == array.size:
            flat = np.asarray(array, dtype=np.float64).reshape(-1)
            if np.all(flat > 0) and np.all(flat <= 1):
                return flat
        node = g.producer.get(current)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        queue.extend(x for x in node.input if x)
    return None


def expected_inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """inv_freq of ember's rope for `cfg` (default or llama3-scaled), as the graph should hold it."""
    d = cfg.head_dim
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    s = cfg.rope_scaling
    if s and s.get("rope_type") == "llama3":
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        between = (wavelen <= old / low) & (wavelen >= old / high)
        inv = np.where(between, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return inv


class OnnxWeights:
    """HF name -> initializer of one graph, transposed to HF layout when the export stored it [in, out]."""

    def __init__(self, store: TensorStore, names: dict[str, Ref]) -> None:
        self.store, self.refs = store, names

    def names(self) -> list[str]:
        return list(self.refs)

    def get(self, name: str) -> np.ndarray:
        ref = self.refs[name]
        array = self.store.array(ref.init)
        return array.T if ref.transpose else array

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        ref = self.refs[name]
        stored = self.store.stored[ref.init]
        return (tuple(reversed(stored.shape)) if ref.transpose else stored.shape), stored.dtype

    def origin(self, name: str) -> str:
        ref = self.refs.get(name)
        return f"{self.store.graph.path} ({ref.init})" if ref else str(self.store.graph.path)


def onnx_source(path: Path) -> ModelSource:
    from ..source import _hf_tokenizer, _read_json

    if not path.is_file():
        raise ModelFormatError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends
        raise ModelFormatError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})") from None
    graph = Graph(model, path)
    store = TensorStore(graph)
    raw, names, notes = recognize(graph)
    beside = path.parent / "config.json"
    hint = _read_json(beside) if beside.is_file() else {}
    if hint:
        for key in STRUCTURAL:
            if key in hint and hint[key] is not None and key in raw and hint[key] != raw[key]:
                raise ModelFormatError(f"{beside}: {key} is {hint[key]!r}, the graph {path.name} has {raw[key]!r}")
        raw.update({k: hint[k] for k in FROM_CONFIG_JSON if k in hint})
        if "rope_parameters" in raw:  # transformers 5: its theta must be the graph's
            raw["rope_parameters"] = {**raw["rope_parameters"], "rope_theta": raw["rope_theta"]}
        if hint.get("model_type") == "mistral" and raw["model_type"] == "llama":
            raw["model_type"] = "mistral"
    config = ModelConfig.from_dict(raw, source=str(path))
    graph_inv = _inverse_frequencies(graph, next(n for n in graph.nodes if n.op_type == "Cos").input[0])
    want = expected_inverse_frequencies(config)
    if graph_inv.shape != want.shape or not np.allclose(graph_inv, want, rtol=1e-4, atol=0):
        scaled = " with its rope_scaling" if config.rope_scaling else ""
        raise ModelFormatError(f"{path}: the rotary frequencies in the graph are not theta^(-2i/d) for theta "
                               f"{config.rope_theta:g}{scaled} (scaled rope such as llama3 needs a config.json "
                               "beside the file that says so; YaRN and others are not recognized)")
    from ..models import architecture_of

    expected = set(architecture_of(config.model_type).parameters(config))
    if expected != set(names):
        raise AssertionError(f"ONNX importer: names {sorted(set(names) ^ expected)} differ from the model's")
    stem = path.parent.name if path.stem in ("model", "decoder_model", "decoder_model_merged") else path.stem
    external = sorted({str(s.file.name) for s in store.stored.values() if s.file is not None})
    producer = f"{model.producer_name} {model.producer_version}".strip() or "unknown producer"
    data = f", external data {', '.join(external)}" if external else ""
    description = (f"ONNX {path.name} ({producer}, {config.model_type}, {config.num_hidden_layers} layers, "
                   f"{len(graph.inits)} initializers{data})")
    return ModelSource(name=stem, config=config, weights=OnnxWeights(store, names),
                       tokenizer=_hf_tokenizer(path.parent, config), description=description, notes=notes,
                       path=str(path.resolve()))
