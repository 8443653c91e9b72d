"""Metal's schedule rules applied for another GPU target (the numerics check of the Metal schedules on cuda).

Each rule is called with the metal target whatever the module is compiled for, so dlight picks its Apple
configurations (tile sizes, vector widths, threads, warp 32) and the scheduled TIR is the one a metal build gets.
Only portable TIR may come out: a schedule that stages data in `metal.*` storage (simdgroup matrices) is refused,
and the function goes to the next rule.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule

from ..tir_walk import walk
from .pipeline import metal_target

if TYPE_CHECKING:
    from tvm.target import Target


def metal_only_scopes(func: tirx.PrimFunc) -> set[str]:
    """The `metal.*` storage scopes a PrimFunc allocates or matches."""
    scopes: set[str] = set()

    for node in walk(func.body):
        buffers = []
        if isinstance(node, s_tir.SBlock):
            buffers = list(node.alloc_buffers) + [m.buffer for m in node.match_buffers]
        elif isinstance(node, (tirx.AllocBuffer, tirx.stmt.DeclBuffer)):
            buffers = [node.buffer]
        scopes.update(b.scope() for b in buffers if b.scope().startswith("metal."))
    return scopes


class ScheduleAsOnMetal(ScheduleRule):
    """`rule`, scheduling for Apple GPUs whatever the compile target; None for Metal-only results."""

    def __init__(self, rule: ScheduleRule) -> None:
        self.rule = rule
        self.refused: list[str] = []  # names of functions whose schedule used metal.* storage
        self._metal = metal_target()

    def apply(self, func: tirx.PrimFunc, target: Target, tune: bool) -> s_tir.Schedule | None:
        space = self.rule.apply(func, self._metal, tune)
        if space is None:
            return None
        sch = space if not isinstance(space, list) else space[0]
        if metal_only_scopes(sch.mod["main"]):
            self.refused.append(str(func.attrs.get("global_symbol", "?")) if func.attrs else "?")
            return None
        return sch

    def __repr__(self) -> str:
        return f"ScheduleAsOnMetal({type(self.rule).__name__})"


def as_on_metal(rules: Sequence[ScheduleRule]) -> list[ScheduleRule]:
    return [ScheduleAsOnMetal(rule) for rule in rules]


__all__ = ["ScheduleAsOnMetal", "as_on_metal", "metal_only_scopes"]
