"""Sliding windows as masks inside ember's attention kernels.

TVM's paged KV cache implements a sliding window by dropping the pages that leave it, and its kernels then let a
prefill chunk see every earlier token of the same chunk: exact only for chunks that fit the window, so prompts past
the window went in one token at a time. Where a target has its own attention kernels for every part of a forward
(ragged prefill, paged prefill, decode), the window is a mask in them instead: the cache keeps every token (as
Hugging Face's does), any chunk length is exact, and sequences can be forked (prefix cache, n > 1). `lower()`
records the window on the module (WINDOW_ATTR) when the target says its kernels take it
(`Target.window_in_kernels`); the manifest says so too (`kv_cache.window_in_kernels`), and the runtime then
creates the cache without TVM's window. `require_windowed` makes a build fail rather than ship a kernel that
ignores the window.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

WINDOW_ATTR = "ember_attention_window"  # IRModule attribute: the window (HF convention) the kernels apply
# IRModule attribute, set when the window applies to some layers only (Gemma's alternating local and global layers):
# TVM's cache calls one kernel for every layer and passes it no layer index, only that layer's sm_scale, so the
# lowering passes -sm_scale for the windowed layers and the kernels take the window where sm_scale < 0 (and use
# |sm_scale|). Modules without it get kernels that read sm_scale as is (the common case is unchanged).
WINDOW_BY_SIGN_ATTR = "ember_attention_window_by_sign"
SOFTCAP_ATTR = "ember_attention_softcap"  # IRModule attribute: cap of tanh soft-capping of the attention scores


def window_of(mod: Any) -> int:
    """The sliding window the module's attention kernels must apply, 0 for none."""
    value = mod.attrs.get(WINDOW_ATTR) if mod is not None and mod.attrs is not None else None
    return int(value) if value is not None else 0


def window_by_sign(mod: Any) -> bool:
    """Whether the kernels take the window only where sm_scale < 0 (WINDOW_BY_SIGN_ATTR)."""
    value = mod.attrs.get(WINDOW_BY_SIGN_ATTR) if mod is not None and mod.attrs is not None else None
    return bool(int(value)) if value is not None else False


def softcap_of(mod: Any) -> float:
    """The soft-capping the attention kernels apply to the scores (cap * tanh(s / cap), s = q.k * sm_scale), 0 for
    none."""
    value = mod.attrs.get(SOFTCAP_ATTR) if mod is not None and mod.attrs is not None else None
    return float(value) if value is not None else 0.0


@dataclass(frozen=True)
class AttentionPlan:
    """What the attention nodes of an ir.Module ask of the kernels: one window for every windowed layer (`window`,
    None for none), the layers it applies to when only some have it (`window_layers`, None: every layer), and the
    soft-capping of the scores (`softcap`, None for none)."""

    window: int | None = None
    window_layers: tuple[int, ...] | None = None
    softcap: float | None = None


def attention_plan(module: Any, ops: Iterable[str]) -> AttentionPlan:
    """The AttentionPlan of `module`'s attention nodes (ops named `ops`); ConfigError where the kernels cannot follow
    it (two different windows, different soft-caps)."""
    from ..errors import ConfigError

    ops = tuple(ops)
    by_layer: dict[int, int | None] = {}
    caps = set()
    for _, node in module.iter_nodes():
        if node.op in ops:
            by_layer[node.attrs["layer"]] = node.attrs.get("sliding_window")
            caps.add(node.attrs.get("logit_softcap"))
    windows = {w for w in by_layer.values() if w is not None}
    if len(windows) > 1:
        raise ConfigError(f"{module.name}: layers with different sliding windows ({', '.join(map(str, sorted(windows)))}"
                          " tokens): ember's attention kernels take one window")
    if len(caps) > 1:
        raise ConfigError(f"{module.name}: layers with different attention soft-capping: ember's kernels take one")
    window = next(iter(windows), None)
    layers = tuple(sorted(layer for layer, w in by_layer.items() if w is not None))
    some = window is not None and len(layers) < len(by_layer)
    cap = next(iter(caps), None)
    return AttentionPlan(window, layers if some else None, float(cap) if cap else None)


def require_windowed(mod: Any, replaced: Iterable[str], what: str) -> None:
    """With a window or a soft-cap recorded, every kernel TVM's cache may call for this model must be one of ember's: `replaced`
    names the originals kept beside their replacements (swap_kernel's keep_as), one per kernel."""
    if not (window_of(mod) or softcap_of(mod)):
        return
    names = {g.name_hint for g in mod.get_global_vars()}
    missing = [name for name in replaced if name not in names]
    if missing:
        from .lower import LoweringError

        needs = "the sliding window" if window_of(mod) else "the soft-capping of the scores"
        raise LoweringError(f"{what}: {needs} needs ember's attention kernels, but "
                            f"{', '.join(n.removesuffix('_inline_rope') for n in missing)} stayed TVM's")


__all__ = ["SOFTCAP_ATTR", "WINDOW_ATTR", "WINDOW_BY_SIGN_ATTR", "AttentionPlan", "attention_plan",
           "require_windowed", "softcap_of", "window_by_sign", "window_of"]
