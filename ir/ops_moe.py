"""Mixture-of-experts operators: a block of E SwiGLU experts, each token routed to top_k of them.

    p      = softmax(f32(logits[t, :]))                          (logits: the router's output, [..., E])
    ids    = the top_k experts of p (largest first)
    w_j    = p[ids_j] / sum_j p[ids_j]  if norm_topk_prob  else  p[ids_j]
    y[t]   = sum_j w_j * down[e_j] . (silu(gate[e_j] . x[t]) * (up[e_j] . x[t]))

Mixtral's router (softmax over the top-k logits) is the norm_topk_prob=True case: softmax then renormalizing the
top k equals a softmax over the top-k logits. Expert weights are stacked: gate and up [E, I, H], down [E, H, I]
(rows of expert e are [e, :, :], as HF's per-expert matrices [out, in]). Quantized experts are each stacked weight's
pieces (ops_quant.QuantFormat of one expert, with a leading E): qweight [E, N, W], scales (and mins) [E, N, G].
The three weights share the node's format attrs, unless attr `weight_formats` gives each its own
({"gate": {scheme, bits, group_size, has_min, super_block?}, "up": ..., "down": ...}: a GGUF Q4_K_M file keeps its
Q4_K gate/up and Q6_K down experts as they are); `moe_formats` reads either.
The router itself stays a plain `linear` (kept float by the Quantize pass, as llama.cpp keeps ffn_gate_inp).
"""
from __future__ import annotations

from typing import Any

from .ops import ShapeError, _float, _need, register
from .ops_quant import QuantFormat
from .types import TensorType, is_float

MOE_WEIGHTS = ("gate", "up", "down")  # input order after x and logits
WEIGHT_FORMATS = "weight_formats"


def moe_formats(attrs: dict[str, Any]) -> tuple[QuantFormat, QuantFormat, QuantFormat]:
    """The packed format of the gate, up and down experts of a quant_moe node."""
    per = attrs.get(WEIGHT_FORMATS)
    if per is None:
        shared = QuantFormat.from_attrs(attrs)
        return shared, shared, shared
    _need(isinstance(per, dict) and all(isinstance(per.get(w), dict) for w in MOE_WEIGHTS),
          f"quant_moe: attr {WEIGHT_FORMATS} must map each of {', '.join(MOE_WEIGHTS)} to its format attrs")
    gate, up, down = (QuantFormat.from_attrs(per[w]) for w in MOE_WEIGHTS)
    return gate, up, down


def moe_schemes(attrs: dict[str, Any]) -> tuple[str, str, str]:
    """The scheme names of the gate, up and down experts (the node's `scheme` where they share one)."""
    per = attrs.get(WEIGHT_FORMATS)
    if per is None:
        return (attrs.get("scheme", "?"),) * 3
    return tuple(per[w].get("scheme", "?") for w in MOE_WEIGHTS)  # type: ignore[return-value]


def _routing(attrs: dict[str, Any], experts: Any, op: str) -> None:
    k = attrs.get("top_k")
    _need(isinstance(experts, int) and experts > 0, f"{op}: the number of experts must be static, got {experts!r}")
    _need(isinstance(k, int) and not isinstance(k, bool) and 0 < k <= experts,
          f"{op}: attr top_k must be an integer in 1..{experts}, got {k!r}")
    _need(isinstance(attrs.get("norm_topk_prob"), bool), f"{op}: attr norm_topk_prob must be a bool")


def _activations(op: str, x: TensorType, logits: TensorType) -> None:
    _float(x, f"{op} input")
    _float(logits, f"{op} router logits")
    _need(x.shape[:-1] == logits.shape[:-1], f"{op}: tokens of input {x} and router logits {logits} differ")


@register("moe", 5, doc="moe(x[..., H], logits[..., E], gate[E, I, H], up[E, I, H], down[E, H, I]) -> x.dtype[..., H]: "
                        "top_k routing and SwiGLU experts (ir/ops_moe.py); attrs: top_k, norm_topk_prob")
def _moe(t, attrs):
    x, logits, gate, up, down = t
    _activations("moe", x, logits)
    _need(gate.ndim == 3 and up.shape == gate.shape,
          f"moe: gate {gate} and up {up} must be the same [E, I, H]")
    experts, inter, hidden = gate.shape
    _need(down.shape == (experts, hidden, inter), f"moe: down {down} must be [E, H, I] = {[experts, hidden, inter]}")
    _need(x.shape[-1] == hidden, f"moe: input {x} has H={x.shape[-1]} but the experts take {hidden}")
    _need(logits.shape[-1] == experts, f"moe: router logits {logits} do not have {experts} experts")
    _need(all(is_float(w.dtype) for w in (gate, up, down)), f"moe: expert weights must be float, got {gate.dtype}")
    _routing(attrs, experts, "moe")
    return [x]


@register("quant_moe", (8, 20), doc="quant_moe(x, logits, gate pieces, up pieces, down pieces) -> x.dtype[..., H]: "
                                    "moe with each stacked expert weight packed as ops_quant describes, per expert; "
                                    "attrs: top_k, norm_topk_prob, scheme, bits, group_size, has_min, "
                                    "super_block?, weight_formats? (one format per weight), hidden (H), "
                                    "intermediate (I)")
def _quant_moe(t, attrs):
    formats = moe_formats(attrs)
    x, logits, pieces = t[0], t[1], list(t[2:])
    _activations("quant_moe", x, logits)
    if len(pieces) != sum(f.num_pieces for f in formats):
        raise ShapeError(f"quant_moe with formats of {', '.join(str(f.num_pieces) for f in formats)} pieces takes "
                         f"x, logits and {sum(f.num_pieces for f in formats)} weight tensors, got {len(t)} inputs")
    hidden, inter = attrs.get("hidden"), attrs.get("intermediate")
    _need(isinstance(hidden, int) and hidden > 0 and isinstance(inter, int) and inter > 0,
          f"quant_moe needs positive int attrs hidden and intermediate, got {hidden!r}, {inter!r}")
    experts = pieces[0].shape[0] if pieces[0].ndim == 3 else None
    _need(isinstance(experts, int), f"quant_moe: packed gate must be [E, rows, words], got {pieces[0]}")
    for which, fmt, (rows, cols) in zip(MOE_WEIGHTS, formats, ((inter, hidden), (inter, hidden), (hidden, inter))):
        n = fmt.num_pieces
        got = pieces[:n]
        pieces = pieces[n:]
        want = [TensorType((experts,) + p.shape, p.dtype) for p in fmt.piece_types(rows, cols)]
        if got != want:
            raise ShapeError(f"quant_moe: {which} of {experts} experts {rows}x{cols} must be "
                             f"{', '.join(map(str, want))}, got {', '.join(map(str, got))}")
    _need(x.shape[-1] == hidden, f"quant_moe: input {x} has H={x.shape[-1]} but attr hidden is {hidden}")
    _need(logits.shape[-1] == experts, f"quant_moe: router logits {logits} do not have {experts} experts")
    _routing(attrs, experts, "quant_moe")
    return [x]
