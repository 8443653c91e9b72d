"""Reproducible builds' host shape functions (targets/shape_func_order.py) on hand-built modules: the canonical store
order, and equal shape functions merged into one with the calls rewired and the names renumbered."""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from ember.targets.shape_func_order import canonical_shape_functions, merged_shape_functions


def _module():
    @I.ir_module
    class Module:
        @T.prim_func(private=True)
        def shape_func(H: T.Buffer((T.int64(4),), "int64")):
            T.func_attr({"tirx.is_host_func": True})
            H[T.int64(2)] = H[T.int64(0)] * T.int64(3)
            H[T.int64(1)] = H[T.int64(0)] * T.int64(2)

        @T.prim_func(private=True)
        def shape_func1(H: T.Buffer((T.int64(4),), "int64")):
            T.func_attr({"tirx.is_host_func": True})
            H[T.int64(3)] = H[T.int64(0)] + T.int64(1)

        @T.prim_func(private=True)
        def shape_func2(H: T.Buffer((T.int64(4),), "int64")):  # shape_func with its stores the other way round
            T.func_attr({"tirx.is_host_func": True})
            H[T.int64(1)] = H[T.int64(0)] * T.int64(2)
            H[T.int64(2)] = H[T.int64(0)] * T.int64(3)

        @R.function(pure=False)
        def main(heap: R.Tensor((4,), "int64")):
            cls = Module
            cls.shape_func2(heap)
            cls.shape_func1(heap)
            cls.shape_func(heap)
            return heap

    return Module


def _called(mod) -> list[str]:
    names = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: names.append(e.op.name_hint) if isinstance(
        e, relax.Call) and isinstance(e.op, tvm.ir.GlobalVar) else None)
    return names


def test_canonical_order_puts_independent_stores_lowest_slot_first():
    mod = canonical_shape_functions()(_module())
    slots = [int(s.indices[0].value) for s in mod["shape_func"].body.seq]
    assert slots == [1, 2]
    assert tvm_ffi.structural_equal(mod["shape_func"], mod["shape_func2"])


def test_equal_shape_functions_merge_and_calls_follow():
    mod = merged_shape_functions()(canonical_shape_functions()(_module()))
    names = sorted(gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert names == ["shape_func", "shape_func1"]
    assert _called(mod) == ["shape_func", "shape_func1", "shape_func"]  # shape_func2's call now reaches shape_func
    assert int(mod["shape_func1"].body.indices[0].value) == 3


def test_nothing_to_merge_leaves_the_module_alone():
    mod = _module()
    del mod["shape_func2"]  # (main still names it, but the pass only looks at shape functions)
    assert merged_shape_functions()(mod).same_as(mod) or tvm_ffi.structural_equal(merged_shape_functions()(mod), mod)
