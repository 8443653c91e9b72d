"""Reproducible builds: a canonical statement order in the host shape functions that Relax's VMShapeLower writes.

VMShapeLower emits a run of `H[slot] = f(H[...])` stores per shape function, in an order that follows object
addresses (it changes from one process to the next), so two builds of the same model differed in a few bytes of
host code. Reordering is safe where the run's data flow allows it: a store moves ahead of another only if neither
reads what the other writes and they write different slots. Among the stores whose inputs are ready, the lowest
slot goes first, so the order no longer depends on the one VMShapeLower happened to produce.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_EXPR_FIELDS = ("a", "b", "value", "args", "indices", "condition", "true_value", "false_value", "base", "stride")


def canonical_shape_functions():
    """A module pass: every host PrimFunc's runs of constant-index stores into one buffer in canonical order."""
    import tvm

    def run(mod: Any, _ctx: Any) -> Any:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            body = _reorder(func.body)
            if body is not None:
                updates[gv] = func.with_body(body)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return tvm.transform.module_pass(run, opt_level=0, name="ember.CanonicalShapeFunctions")


def _reorder(stmt: Any) -> Any | None:
    """The statement with its SeqStmt's store runs reordered, or None when nothing changed (only a top-level
    SeqStmt is looked at: VMShapeLower writes its shape functions flat)."""
    import tvm

    if not isinstance(stmt, tvm.tirx.SeqStmt):
        return None
    out: list[Any] = []
    run: list[Any] = []
    changed = False
    for child in stmt.seq:
        if _slot(child) is not None and (not run or child.buffer.same_as(run[0].buffer)):
            run.append(child)
            continue
        ordered = _order(run)
        changed |= any(not a.same_as(b) for a, b in zip(ordered, run))
        out.extend(ordered)
        run = [child] if _slot(child) is not None else []
        if not run:
            out.append(child)
    ordered = _order(run)
    changed |= any(not a.same_as(b) for a, b in zip(ordered, run))
    out.extend(ordered)
    return tvm.tirx.SeqStmt(out) if changed else None


def _slot(stmt: Any) -> int | None:
    """The constant index of a one-index BufferStore, else None."""
    import tvm

    if not isinstance(stmt, tvm.tirx.BufferStore) or len(stmt.indices) != 1:
        return None
    index = stmt.indices[0]
    return int(index.value) if isinstance(index, tvm.tirx.IntImm) else None


def _order(run: list[Any]) -> list[Any]:
    """Kahn's algorithm over the run's read/write dependencies, lowest slot first among the ready stores."""
    if len(run) < 2:
        return list(run)
    writes = [_slot(s) for s in run]
    reads = [_reads(s.value, s.buffer) for s in run]

    def reads_slot(k: int, slot: int | None) -> bool:
        return reads[k] is None or slot in reads[k]  # None: a load at a computed index may read any slot

    before: list[set[int]] = [set() for _ in run]  # stores that must precede each store
    for j in range(len(run)):
        for i in range(j):
            if reads_slot(j, writes[i]) or reads_slot(i, writes[j]) or writes[i] == writes[j]:
                before[j].add(i)
    done: set[int] = set()
    ordered: list[Any] = []
    while len(ordered) < len(run):
        ready = [k for k in range(len(run)) if k not in done and before[k] <= done]
        pick = min(ready, key=lambda k: (writes[k], k))
        done.add(pick)
        ordered.append(run[pick])
    return ordered


def _reads(expr: Any, buffer: Any) -> set[int] | None:
    """Slots of `buffer` that `expr` loads; None when one load's index is not a constant (it may read any)."""
    import tvm

    found: set[int] = set()
    for node in _walk(expr):
        if _is_load(node) and node.buffer.same_as(buffer):
            index = node.indices[0] if len(node.indices) == 1 else None
            if not isinstance(index, tvm.tirx.IntImm):
                return None
            found.add(int(index.value))
    return found


def _is_load(node: Any) -> bool:
    return type(node).__name__ == "BufferLoad"  # (tvm.tirx.BufferLoad is a constructor function in 0.27)


def _walk(expr: Any) -> Iterator[Any]:
    todo = [expr]
    while todo:
        node = todo.pop()
        yield node
        for name in _EXPR_FIELDS:
            child = getattr(node, name, None)
            if child is None or isinstance(child, (int, float, str, bool)):
                continue
            if isinstance(child, _sequence_types()):
                todo.extend(child)
            elif hasattr(child, "dtype"):  # a PrimExpr
                todo.append(child)


def _sequence_types() -> tuple[type, ...]:
    import tvm_ffi

    return (tvm_ffi.Array, list, tuple)


__all__ = ["canonical_shape_functions"]
