"""A dlight-style cpu rule for single-block elementwise/injective kernels (SwiGLU, residual adds, casts...).

dlight's cpu rules leave these serial and scalar: the outer loops are fused and parallelized, the innermost
loop (static extent) is split into vector lanes. Any kernel that normalizes to one all-spatial block is taken
(spatial block iterations are independent by construction), e.g. the KV cache's fused rope split, which runs
at every prefill; anything else is left to the following rules.
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .matmul_schedule import _const, _vector_lanes

MIN_PARALLEL = 4096  # elements: below this (static) size a parallel launch costs more than it saves


class Elementwise(CPUScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if not infos or len(infos) != 1 or not infos[0].is_injective() or not infos[0].iters:
            return None
        block = infos[0].block_rv
        loops = sch.get_loops(block)
        extents = [_const(sch.get(loop).extent) for loop in loops]
        if None not in extents and _product(extents) < MIN_PARALLEL:
            return None
        inner = extents[-1]
        if inner is None:
            return None
        dtype = sch.get(block).writes[0].source.dtype
        # TVM 0.27's vectorizer rejects the Let bindings of bfloat16 kernels (the rope split's casts): keep them scalar
        vl = 1 if str(dtype) == "bfloat16" else _vector_lanes(target, dtype.bits)
        while inner % vl:
            vl //= 2
        try:
            outer = sch.fuse(*loops[:-1]) if len(loops) > 1 else None
            inner_outer, lanes = sch.split(loops[-1], [None, vl])
            if outer is None:
                outer = inner_outer
            sch.parallel(outer)
            if vl > 1:
                sch.vectorize(lanes)
        except Exception:  # pylint: disable=broad-except
            return None
        return sch


def _product(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


__all__ = ["Elementwise"]
