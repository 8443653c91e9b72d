"""Operator definitions: for each op, its type rule. Semantics are documented per op.

A type rule takes the input types and attrs and returns the output types, or raises `ShapeError`
with a message that names what is wrong. The verifier and the builder both use these rules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .types import Dim, TensorType, is_float


class ShapeError(ValueError):
    pass


TypeRule = Callable[[list[TensorType], dict[str, Any]], list[TensorType]]


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: TypeRule
    num_inputs: tuple[int, int]  # (min, max)
    side_effect: bool = False  # kept by dead-code elimination (e.g. writes the KV cache)
    doc: str = ""


OPS: dict[str, OpDef] = {}


def register(name: str, num_inputs: int | tuple[int, int], side_effect: bool = False, doc: str = ""):
    bounds = (num_inputs, num_inputs) if isinstance(num_inputs, int) else num_inputs

    def wrap(rule: TypeRule) -> TypeRule:
        OPS[name] = OpDef(name, rule, bounds, side_effect, doc)
        return rule

    return wrap


def infer_types(op: str, inputs: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    if op not in OPS:
        raise ShapeError(f"unknown op {op!r}")
    lo, hi = OPS[op].num_inputs
    if not lo <= len(inputs) <= hi:
        raise ShapeError(f"{op} takes {lo}..{hi} inputs, got {len(inputs)}")
    return OPS[op].infer(inputs, attrs)


def _fmt(types: list[TensorType]) -> str:
    return ", ".join(str(t) for t in types)


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ShapeError(message)


def _float(t: TensorType, what: str) -> None:
    _need(is_float(t.dtype), f"{what} must be a float tensor, got {t}")


def _broadcast(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    out: list[Dim] = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise ShapeError(f"shapes {a} and {b} do not broadcast")
    return tuple(reversed(out))


# ---- embeddings and linear algebra ---------------------------------------------------------------

@register("embedding", 2, doc="embedding(ids int[*S], weight[V, H]) -> dtype[*S, H]; attrs: dtype")
def _embedding(t, attrs):
    ids, weight = t
    _need(ids.dtype == "int32", f"ids must be int32, got {ids}")
    _need(weight.ndim == 2, f"embedding weight must be 2-D, got {weight}")
    return [TensorType(ids.shape + (weight.shape[1],), attrs.get("dtype", weight.dtype))]


@register("linear", (2, 3), doc="linear(x[..., K], weight[N, K], bias[N]?) -> x.dtype[..., N]; fp32 accumulation")
def _linear(t, attrs):
    x, weight = t[0], t[1]
    _float(x, "linear input")
    _need(weight.ndim == 2, f"linear weight must be 2-D, got {weight}")
    _need(x.shape[-1] == weight.shape[1], f"linear: input {x} has K={x.shape[-1]} but weight {weight} has K={weight.shape[1]}")
    if len(t) == 3:
        _need(t[2].shape == (weight.shape[0],), f"linear: bias {t[2]} does not match weight {weight}")
    return [TensorType(x.shape[:-1] + (weight.shape[0],), x.dtype)]


@register("matmul", 2, doc="matmul(a[..., M, K], b[..., K, N]) -> [..., M, N]")
def _matmul(t, attrs):
    a, b = t
    _need(a.ndim >= 2 and b.ndim >= 2, f"matmul needs 2-D+ operands, got {_fmt(t)}")
    _need(a.shape[-1] == b.shape[-2], f"matmul: K mismatch between {a} and {b}")
    _need(a.dtype == b.dtype, f"matmul: dtype mismatch between {a} and {b}")
    batch = _broadcast(a.shape[:-2], b.shape[:-2])
    return [TensorType(batch + (a.shape[-2], b.shape[-1]), a.dtype)]


# ---- normalization ------------------------------------------------------------------------------

@register("rms_norm", 2, doc="rms_norm(x[..., H], weight[H]) -> x; attrs: eps")
def _rms_norm(t, attrs):
    x, weight = t
    _float(x, "rms_norm input")
    _need(weight.shape == (x.shape[-1],), f"rms_norm: weight {weight} does not match input {x}")
    _need("eps" in attrs, "rms_norm needs attr eps")
    return [x]


@register("layer_norm", 3, doc="layer_norm(x[..., H], weight[H], bias[H]) -> x; attrs: eps")
def _layer_norm(t, attrs):
    x, weight, bias = t
    _float(x, "layer_norm input")
    _need(weight.shape == (x.shape[-1],) and bias.shape == (x.shape[-1],),
          f"layer_norm: weight {weight} / bias {bias} do not match input {x}")
    return [x]


# ---- positions and attention --------------------------------------------------------------------

ROPE_TYPES = ("default", "llama3", "longrope", "linear", "yarn")  # linear: positions divided by factor


@register("rope", 1, doc="rope(x[B, S, heads, D]) -> x, rotary embedding at each token's position in its "
                         "sequence (positions come from the KV cache); attrs: theta, scaling (dict|None), rotary_dim")
def _rope(t, attrs):
    (x,) = t
    _float(x, "rope input")
    _need(x.ndim == 4, f"rope expects [batch, seq, heads, head_dim], got {x}")
    rotary_dim = attrs.get("rotary_dim", x.shape[-1])
    _need(isinstance(x.shape[-1], int) and rotary_dim <= x.shape[-1] and rotary_dim % 2 == 0,
          f"rope: rotary_dim {rotary_dim} does not fit head_dim of {x}")
    scaling = attrs.get("scaling") or {}
    _need(scaling.get("rope_type", "default") in ROPE_TYPES,
          f"rope: unsupported rope_type {scaling.get('rope_type')!r} (supported: {', '.join(ROPE_TYPES)})")
    if scaling.get("rope_type") == "longrope":
        for key in ("short_factor", "long_factor"):
            _need(len(scaling.get(key) or ()) == rotary_dim // 2,
                  f"rope: longrope {key} needs rotary_dim / 2 = {rotary_dim // 2} entries")
        _need(isinstance(scaling.get("original_max_position_embeddings"), int) and
              isinstance(scaling.get("attention_factor"), float),
              "rope: longrope needs original_max_position_embeddings (int) and attention_factor (float)")
    if scaling.get("rope_type") == "yarn":
        _need(all(k in scaling for k in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                                          "attention_factor")),
              "rope: yarn needs factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor")
    return [x]


@register("paged_attention", 3, side_effect=True,
          doc="paged_attention(q[B, S, H, D], k[B, S, KVH, D], v[B, S, KVH, D]) -> [B, S, H, D]: appends k/v of "
              "the current tokens to the paged KV cache of `layer`, then causal attention over each sequence's "
              "history (GQA when KVH < H; sliding window when set). attrs: layer, sm_scale, sliding_window, "
              "logit_softcap (optional: scores s = q.k * sm_scale become cap * tanh(s / cap)), "
              "rope (dict, set by fuse_rope: the cache rotates q and k itself)")
def _paged_attention(t, attrs):
    q, k, v = t
    _need(q.ndim == 4 and k.ndim == 4 and v.ndim == 4, f"paged_attention expects 4-D q/k/v, got {_fmt(t)}")
    _need(q.shape[:2] == k.shape[:2] == v.shape[:2], f"paged_attention: batch/seq dims differ in {_fmt(t)}")
    _need(k.shape == v.shape, f"paged_attention: k {k} and v {v} differ")
    _need(q.shape[3] == k.shape[3], f"paged_attention: head_dim of q {q} and k {k} differ")
    _need(q.dtype == k.dtype == v.dtype, f"paged_attention: dtypes differ in {_fmt(t)}")
    hq, hkv = q.shape[2], k.shape[2]
    _need(isinstance(hq, int) and isinstance(hkv, int) and hq % hkv == 0,
          f"paged_attention: {hq} query heads are not a multiple of {hkv} kv heads")
    _need("layer" in attrs and "sm_scale" in attrs, "paged_attention needs attrs layer and sm_scale")
    return [q]


# ---- elementwise ----------------------------------------------------------------------------------

def _unary(name: str, doc: str) -> None:
    def rule(t, attrs):
        _float(t[0], f"{name} input")
        return [t[0]]

    register(name, 1, doc=doc)(rule)


_unary("silu", "silu(x) = x * sigmoid(x)")
_unary("gelu", "gelu(x); attrs: approximate ('none' | 'tanh')")


@register("scale", 1, doc="scale(x) = x * attrs.factor (a constant, e.g. Gemma's sqrt(hidden) embedding scale)")
def _scale(t, attrs):
    _float(t[0], "scale input")
    _need(isinstance(attrs.get("factor"), float), "scale needs a float attr factor")
    return [t[0]]


@register("softcap", 1, doc="softcap(x) = cap * tanh(x / cap), computed in fp32 (Gemma 2's logit soft-capping); "
                            "attrs: cap > 0")
def _softcap(t, attrs):
    _float(t[0], "softcap input")
    cap = attrs.get("cap")
    _need(isinstance(cap, float) and cap > 0, f"softcap needs a positive float attr cap, got {cap!r}")
    return [t[0]]


def _binary(name: str, doc: str) -> None:
    def rule(t, attrs):
        a, b = t
        _need(a.dtype == b.dtype, f"{name}: dtype mismatch between {a} and {b}")
        return [TensorType(_broadcast(a.shape, b.shape), a.dtype)]

    register(name, 2, doc=doc)(rule)


_binary("add", "add(a, b), numpy broadcasting")
_binary("mul", "mul(a, b), numpy broadcasting")


@register("cast", 1, doc="cast(x) -> x as attrs.dtype")
def _cast(t, attrs):
    return [TensorType(t[0].shape, attrs["dtype"])]


@register("softmax", 1, doc="softmax(x) along attrs.axis, computed in fp32")
def _softmax(t, attrs):
    _float(t[0], "softmax input")
    return [t[0]]


# ---- shapes -------------------------------------------------------------------------------------

def _static_product(dims) -> int | None:
    total = 1
    for d in dims:
        if isinstance(d, str):
            return None
        total *= d
    return total


@register("reshape", 1, doc="reshape(x) to attrs.shape (symbolic dims must appear in both shapes)")
def _reshape(t, attrs):
    (x,) = t
    shape = tuple(attrs["shape"])
    _need(sorted(x.symbols) == sorted(d for d in shape if isinstance(d, str)),
          f"reshape {x} -> {shape}: symbolic dims must be kept")
    a, b = _static_product([d for d in x.shape if isinstance(d, int)]), _static_product(
        [d for d in shape if isinstance(d, int)])
    _need(a == b, f"reshape {x} -> {shape}: element counts differ")
    return [TensorType(shape, x.dtype)]


@register("transpose", 1, doc="transpose(x) by attrs.axes")
def _transpose(t, attrs):
    (x,) = t
    axes = list(attrs["axes"])
    _need(sorted(axes) == list(range(x.ndim)), f"transpose {x}: bad axes {axes}")
    return [TensorType(tuple(x.shape[a] for a in axes), x.dtype)]


@register("split", 1, doc="split(x) into pieces of attrs.sizes along attrs.axis -> several outputs")
def _split(t, attrs):
    (x,) = t
    axis, sizes = attrs["axis"] % x.ndim, list(attrs["sizes"])
    _need(x.shape[axis] == sum(sizes), f"split {x}: sizes {sizes} do not add up to dim {axis}")
    return [TensorType(x.shape[:axis] + (s,) + x.shape[axis + 1:], x.dtype) for s in sizes]


@register("concat", (1, 64), doc="concat(*xs) along attrs.axis")
def _concat(t, attrs):
    axis = attrs["axis"] % t[0].ndim
    first = t[0]
    total = 0
    for x in t:
        _need(x.ndim == first.ndim and x.dtype == first.dtype, f"concat: {_fmt(t)} differ in rank or dtype")
        _need(all(x.shape[i] == first.shape[i] for i in range(x.ndim) if i != axis),
              f"concat along {axis}: {_fmt(t)} differ off-axis")
        _need(isinstance(x.shape[axis], int), f"concat along a symbolic dim: {_fmt(t)}")
        total += x.shape[axis]
    return [TensorType(first.shape[:axis] + (total,) + first.shape[axis + 1:], first.dtype)]


@register("gather_tokens", 2, doc="gather_tokens(x[1, T, H], positions int32[N]) -> [1, N, H]: rows of the "
                                  "flattened token axis (the last token of each sequence, or all of them)")
def _gather_tokens(t, attrs):
    x, pos = t
    _need(x.ndim == 3 and x.shape[0] == 1, f"gather_tokens expects [1, tokens, hidden], got {x}")
    _need(pos.ndim == 1 and pos.dtype == "int32", f"gather_tokens positions must be int32[N], got {pos}")
    return [TensorType((1, pos.shape[0], x.shape[2]), x.dtype)]
