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


def merged_shape_functions():
    """A module pass, after canonical_shape_functions: host shape functions that are now equal become one, and the
    ones left are numbered shape_func, shape_func1, ... in their old order.

    VMShapeLower adds each shape function through a BlockBuilder, which reuses an equal function already there: two
    shape functions whose stores it happened to emit in the same order are one function, in the other order two
    (seen in llama3-8b q0f16 cuda builds: 4 or 5 host shape functions from one process to the next). Once the
    stores are in canonical order, merging the equal ones gives every build the same set."""
    import tvm
    from tvm import relax

    def run(mod: Any, _ctx: Any) -> Any:
        shape = sorted(((gv, f) for gv, f in mod.functions_items() if _is_shape_function(gv, f)),
                       key=lambda item: _number(item[0].name_hint))
        survivors: list[tuple[Any, Any]] = []
        replaced: dict[Any, Any] = {}  # old GlobalVar -> the survivor it becomes
        for gv, func in shape:
            same = next((kept for kept, kept_func in survivors if _same_body(func, kept_func)), None)
            if same is None:
                survivors.append((gv, func))
            else:
                replaced[gv] = same
        if not replaced:
            return mod
        # survivor i moves to the i-th shape function's GlobalVar (they all have one signature: the shape heap)
        slots = [gv for gv, _ in shape]
        index = {gv: i for i, (gv, _) in enumerate(survivors)}
        renamed = {}
        for i, (gv, func) in enumerate(survivors):
            named = "global_symbol" in func.attrs  # VMShapeLower's are private: named by their GlobalVar
            renamed[slots[i]] = func.with_attr("global_symbol", slots[i].name_hint) if named else func
        target = {gv: slots[i] for gv, i in index.items()} | {gv: slots[index[kept]] for gv, kept in replaced.items()}

        @relax.expr_functor.mutator
        class Rename(relax.PyExprMutator):
            def visit_call_(self, call: Any) -> Any:
                call = super().visit_call_(call)
                if isinstance(call.op, tvm.ir.GlobalVar) and call.op in target:
                    return relax.Call(target[call.op], call.args, call.attrs, call.ty_args, call.span)
                return call

        out = tvm.IRModule({}, attrs=mod.attrs, global_infos=mod.global_infos)
        for gv, func in mod.functions_items():
            if gv in renamed:
                out[gv] = renamed[gv]
            elif _is_shape_function(gv, func):
                continue  # merged away (the last numbers)
            elif isinstance(func, relax.Function):
                out[gv] = Rename(mod).visit_expr(func)
            else:
                out[gv] = func
        return out

    return tvm.transform.module_pass(run, opt_level=0, name="ember.MergedShapeFunctions")


def _is_shape_function(gv: Any, func: Any) -> bool:
    import tvm

    return (isinstance(func, tvm.tirx.PrimFunc) and gv.name_hint.startswith("shape_func")
            and _number(gv.name_hint) is not None and bool(func.attrs and func.attrs.get("tirx.is_host_func")))


def _number(name: str) -> int | None:
    rest = name[len("shape_func"):]
    return 0 if rest == "" else int(rest) if rest.isdigit() else None


def _same_body(a: Any, b: Any) -> bool:
    import tvm_ffi

    return tvm_ffi.structural_equal(a.with_attr("global_symbol", "f"), b.with_attr("global_symbol", "f"))


__all__ = ["canonical_shape_functions", "merged_shape_functions"]
