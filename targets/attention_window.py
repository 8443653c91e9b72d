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
from typing import Any

WINDOW_ATTR = "ember_attention_window"  # IRModule attribute: the window (HF convention) the kernels apply


def window_of(mod: Any) -> int:
    """The sliding window the module's attention kernels must apply, 0 for none."""
    value = mod.attrs.get(WINDOW_ATTR) if mod is not None and mod.attrs is not None else None
    return int(value) if value is not None else 0


def require_windowed(mod: Any, replaced: Iterable[str], what: str) -> None:
    """With a window recorded, every kernel TVM's cache may call for this model must be one of ember's: `replaced`
    names the originals kept beside their replacements (swap_kernel's keep_as), one per kernel."""
    if not window_of(mod):
        return
    names = {g.name_hint for g in mod.get_global_vars()}
    missing = [name for name in replaced if name not in names]
    if missing:
        from .lower import LoweringError

        raise LoweringError(f"{what}: the sliding window needs ember's attention kernels, but "
                            f"{', '.join(n.removesuffix('_inline_rope') for n in missing)} stayed TVM's")


__all__ = ["WINDOW_ATTR", "require_windowed", "window_of"]
