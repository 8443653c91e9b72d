"""Prefill GEMMs on Apple GPUs' simdgroup matrices (8x8 tiles), with float32 accumulation.

dlight's own Metal matmul (`MetalMatmul`, tried inside `dl.gpu.Matmul`) only tensorizes float16 x float16 ->
float16, and ember accumulates every linear layer in float32 (targets/lower.py, lower_quant.py), so it never
applies. MSL's `simdgroup_multiply_accumulate` takes half input matrices and a float accumulator, so this rule
loads half tiles (the dequantized weight of a quantized linear is computed in those loads) and accumulates in
`simdgroup_float8x8`; a float16 accumulator uses TVM's float16 intrinsics. Anything else (bfloat16, float32
inputs, no GEMM shape) is left to the next rule.

Tile: a threadgroup of `simdgroups_m x simdgroups_n` simdgroups (32 lanes each) computes a block of
(simdgroups_m * tile_m) x (simdgroups_n * tile_n) outputs; each simdgroup holds (tile_m/8) x (tile_n/8)
accumulators. A and B tiles of `tile_k` columns are staged in threadgroup memory with 4-wide vector loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import TensorIntrin
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import (auto_inline_consumer_chain, auto_inline_producers, get_index_map,
                                         get_reduction_blocks)
from tvm.script import tirx as T

from ..tvmscript import cheap_inspect_stack, preload_tensor_intrinsics

preload_tensor_intrinsics()  # before tensor_intrin.metal: its package parses 248 intrinsics on import
from tvm.s_tir.tensor_intrin import metal as metal_intrin  # noqa: E402

if TYPE_CHECKING:
    from tvm.target import Target

FRAGMENT = 8  # Metal's only simdgroup matrix size
SIMD_WIDTH = 32
VECTOR = 4  # lanes of each threadgroup-memory load/store (MSL vectors are at most 4 wide)

MMA_F16_F32 = "ember_simdgroup_mma_8x8x8_f16_f32"
STORE_F32_SHARED = "ember_simdgroup_store_8x8x8_f32_shared"
FILL_F32 = "simdgroup_fill_8x8x8_f32"  # registered by tvm.s_tir.tensor_intrin.metal


def _mixed_mma_intrin() -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """C(float32) += A(float16) * B(float16) on one 8x8x8 fragment triple."""
    n = FRAGMENT
    index = metal_intrin.get_simdgroup_index

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (n, n), "float16", scope="metal.simdgroup", offset_factor=1)
        B = T.match_buffer(b, (n, n), "float16", scope="metal.simdgroup", offset_factor=1)
        C = T.match_buffer(c, (n, n), "float32", scope="metal.simdgroup", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:n, 0:n], A[0:n, 0:n], B[0:n, 0:n])
            T.writes(C[0:n, 0:n])
            for i, j, k in T.grid(n, n, n):
                with T.sblock(""):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.Cast("float32", A[vi, vk]) * T.Cast("float32", B[vk, vj])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        a1, a0, b1, b0, c1, c0 = T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (n, n), "float16", scope="metal.simdgroup", strides=[a1, a0], offset_factor=1)
        B = T.match_buffer(b, (n, n), "float16", scope="metal.simdgroup", strides=[b1, b0], offset_factor=1)
        C = T.match_buffer(c, (n, n), "float32", scope="metal.simdgroup", strides=[c1, c0], offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:n, 0:n], A[0:n, 0:n], B[0:n, 0:n])
            T.writes(C[0:n, 0:n])
            T.metal.simdgroup_multiply_accumulate(
                C.data, index(C, c1, n, n), A.data, index(A, a1, n, n), B.data, index(B, b1, n, n),
                C.data, index(C, c1, n, n))

    return desc, impl


def _store_f32_intrin() -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """A float32 accumulator fragment -> threadgroup memory, fenced by threadgroup barriers.

    TVM's StorageRewrite lets this float32 staging buffer share memory with the half A/B tiles (their lifetimes do
    not overlap). A typed `tvm_access_ptr` into that merged half buffer fails lowering, so the pointer is an
    `address_of` (printed as `&((threadgroup float*)buf)[i]`). ThreadSync counts `address_of` as a read, so it
    would not order this write after other simdgroups' last reads of the A/B tiles, nor before the epilogue's reads:
    the barriers do (uniform control flow: every simdgroup stores the same number of fragments).
    """
    n = FRAGMENT
    index = metal_intrin.get_simdgroup_index

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (n, n), "float32", align=n * n, scope="metal.simdgroup", offset_factor=1)
        C = T.match_buffer(c, (n, n), "float32", align=n * n, scope="shared", offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:n, 0:n])
            T.writes(C[0:n, 0:n])
            for i, j in T.grid(n, n):
                with T.sblock("store"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = A[vi, vj]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        s1, s0, d1, d0 = T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (n, n), "float32", align=n * n, scope="metal.simdgroup", strides=[s1, s0],
                           offset_factor=1)
        C = T.match_buffer(c, (n, n), "float32", align=n * n, scope="shared", strides=[d1, d0], offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:n, 0:n])
            T.writes(C[0:n, 0:n])
            T.tvm_storage_sync("shared")
            T.metal.simdgroup_store(A.data, index(A, s1, n, n), T.address_of(C[0, 0]), d1, n, n, False)
            T.tvm_storage_sync("shared")

    return desc, impl


def _register_intrinsics() -> None:
    with cheap_inspect_stack():
        if TensorIntrin.get(MMA_F16_F32, allow_missing=True) is None:
            TensorIntrin.register(MMA_F16_F32, *_mixed_mma_intrin())
        if TensorIntrin.get(STORE_F32_SHARED, allow_missing=True) is None:
            TensorIntrin.register(STORE_F32_SHARED, *_store_f32_intrin())


def _intrinsics(accumulator: str) -> dict[str, str]:
    """Tensor intrinsic names for half inputs (B loaded transposed) and a float32 or float16 accumulator."""
    group = metal_intrin.get_simdgroup_intrin_group("shared", "shared", "float16", trans_a=False, trans_b=True)
    if accumulator == "float32":
        group.update(compute=MMA_F16_F32, store=STORE_F32_SHARED, init=FILL_F32)
    return group


@dataclass(frozen=True)
class SimdgroupTile:
    simdgroups_m: int = 1
    simdgroups_n: int = 4
    tile_m: int = 16  # rows of C per simdgroup (multiple of 8)
    tile_n: int = 16  # columns of C per simdgroup (multiple of 8)
    tile_k: int = 32  # K staged per step (multiple of 8)

    @property
    def threads(self) -> int:
        return self.simdgroups_m * self.simdgroups_n * SIMD_WIDTH

    def threadgroup_bytes(self, accumulator_bytes: int) -> int:
        rows, cols = self.simdgroups_m * self.tile_m, self.simdgroups_n * self.tile_n
        return 2 * (rows + cols) * self.tile_k + rows * cols * accumulator_bytes


class SimdgroupMatmul(GPUScheduleRule):
    """GEMMs with half inputs on simdgroup matrices; float32 or float16 accumulation (see the module doc).

    `emulate=True` is the same schedule with each simdgroup matrix in per-thread local memory and the tensor
    intrinsics left as the loops they stand for (every lane of a simdgroup computes its fragments redundantly):
    portable TIR that runs on another GPU, so the tiling, padding, staging and epilogue of this schedule can be
    checked numerically where no Apple GPU is at hand. It says nothing about Apple's simdgroup instructions.
    """

    def __init__(self, tile: SimdgroupTile = SimdgroupTile(), emulate: bool = False) -> None:
        self.tile = tile
        self.emulate = emulate

    def apply(self, func: tirx.PrimFunc, target: Target, _tune: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "metal" or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
        reductions = get_reduction_blocks(sch, blocks)
        if reductions is None or len(reductions) != 1:
            return None
        main = reductions[0]
        stmt = sch.get(main)
        if get_index_map(stmt) is None or len(stmt.writes) != 1:
            return None
        operands = [r.source.dtype for r in stmt.reads if not r.source.same_as(stmt.writes[0].source)]
        accumulator = str(stmt.writes[0].source.dtype)
        if [str(d) for d in operands] != ["float16", "float16"] or accumulator not in ("float32", "float16"):
            return None
        try:
            self._schedule(sch, main, accumulator)
        except (tvm.error.TVMError, s_tir.ScheduleError, AssertionError):  # intrinsics cannot cover it: next rule
            return None
        return sch

    def _schedule(self, sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV, accumulator: str) -> None:
        _register_intrinsics()
        tile = self.tile
        # C[s, i, j] += A[s, i, k] * B[s, j, k], every operand in its own reindexed buffer
        reindexed = [sch.reindex(main, ("read", 0)), sch.reindex(main, ("read", 1)), sch.reindex(main, ("write", 0))]
        block_map, a_map, b_map, c_map = get_index_map(sch.get(main))
        sch.transform_layout(reindexed[0], ("write", 0), a_map)
        sch.transform_layout(reindexed[1], ("write", 0), b_map)
        sch.transform_layout(reindexed[2], ("read", 0), c_map)
        sch.transform_block_layout(main, block_map)
        rows, cols = tile.simdgroups_m * tile.tile_m, tile.simdgroups_n * tile.tile_n
        sch.pad_einsum(main, [1, rows, cols, tile.tile_k])

        batch, i, j, k = sch.get_loops(main)
        bi, sg_m, i_frag, i_in = sch.split(i, [None, tile.simdgroups_m, tile.tile_m // FRAGMENT, FRAGMENT])
        bj, sg_n, j_frag, j_in = sch.split(j, [None, tile.simdgroups_n, tile.tile_n // FRAGMENT, FRAGMENT])
        k_step, k_frag, k_in = sch.split(k, [None, tile.tile_k // FRAGMENT, FRAGMENT])
        sch.reorder(bi, bj, sg_m, sg_n, k_step, k_frag, i_frag, j_frag, i_in, j_in, k_in)
        sch.bind(bi, "blockIdx.x")
        sch.bind(bj, "blockIdx.y")
        sch.bind(batch, "blockIdx.z")
        sch.bind(sg_m, "threadIdx.y")
        sch.bind(sg_n, "threadIdx.z")

        def cooperative(block: s_tir.schedule.SBlockRV) -> None:
            """Spread a copy over every lane of the threadgroup, VECTOR elements per lane."""
            fused = sch.fuse(*sch.get_loops(block)[-2:])
            _, tz, ty, tx, vec = sch.split(fused, [None, tile.simdgroups_n, tile.simdgroups_m, SIMD_WIDTH, VECTOR])
            sch.bind(tz, "threadIdx.z")
            sch.bind(ty, "threadIdx.y")
            sch.bind(tx, "threadIdx.x")
            sch.vectorize(vec)

        for operand in (0, 1):  # global -> threadgroup memory, once per K step; producers (dequant) inline here
            staged = sch.cache_read(main, operand, "shared")
            sch.compute_at(staged, k_step, preserve_unit_loops=True)
            cooperative(staged)
            auto_inline_producers(sch, staged)

        fragments = "local" if self.emulate else "metal.simdgroup"
        a_frag = sch.cache_read(main, 0, fragments)
        b_frag = sch.cache_read(main, 1, fragments)
        sch.compute_at(a_frag, k_frag)
        sch.compute_at(b_frag, k_frag)
        sch.transform_layout(b_frag, ("write", 0), lambda s, jj, kk: (s, kk, jj))  # B^T fragments for the mma
        c_frag = sch.cache_write(main, 0, fragments)
        c_staged = sch.cache_write(c_frag, 0, "shared")
        sch.reverse_compute_at(c_frag, sg_n, preserve_unit_loops=True)
        sch.reverse_compute_at(c_staged, bj, preserve_unit_loops=True)

        names = _intrinsics(accumulator)
        init = sch.decompose_reduction(main, k_step)
        for block, intrin in ((a_frag, "load_a"), (b_frag, "load_b"), (c_frag, "store"), (init, "init")):
            *_, r, c = sch.get_loops(block)
            r_out, r_in = sch.split(r, [None, FRAGMENT])
            c_out, c_in = sch.split(c, [None, FRAGMENT])
            sch.reorder(r_out, c_out, r_in, c_in)
            if not self.emulate:
                sch.tensorize(r_in, names[intrin])
        if not self.emulate:
            *_, i_in, _, _ = sch.get_loops(main)
            sch.tensorize(i_in, names["compute"])

        auto_inline_consumer_chain(sch, c_staged)  # the epilogue (cast, bias) runs on the threadgroup copy of C
        cooperative(c_staged)


__all__ = ["SimdgroupMatmul", "SimdgroupTile"]
