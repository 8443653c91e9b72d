"""A dlight-style cpu schedule rule for "NT" matmuls: Y[m, n] = sum_k X[m, k] * W[n, k] (+ fused epilogue).

These are all of a decoder's linear layers (the weight is [n, k], so both operands are contiguous in k), with
m symbolic (prefill `total_len`, decode `batch`, `num_logits`) or static (1 in `decode1`), possibly a cast of the
weight fused in as a prologue (f16 weights, f32 compute) and elementwise epilogues (residual add, ...).

Schedule (register-blocked inner products, the same shape as a hand-written AVX kernel):
  for nb in parallel(N / NB):            # a block of NB weight rows, about L2-sized, one per thread at a time
    for mo in M_padded / MR:             # MR activation rows, copied once into a zero-padded tile
      for no in NB / NR:                 # MR x NR output tile
        acc[MR, NR, VL] = 0              # MR*NR vector accumulators (registers)
        for ko in K / VL:
          for mi, ni (unrolled): acc[mi, ni, :] += x_tile[mi, ko*VL : +VL] * W[n, ko*VL : +VL]   # vector FMA
        y[mi, ni] = horizontal_sum(acc[mi, ni, :]); epilogue(y)                                 # then stored
Each weight vector loaded is used for MR rows and each activation vector for NR columns. M is padded to a
multiple of MR with `pad_einsum` (only the activation tile is padded, never the weight), so the hot loop has no
bounds checks; rows past M are computed on zeros and never stored. The k split uses the largest of
VL, VL/2, ... dividing K (rfactor over the lanes), so any K works; NR is the largest divisor of N up to NR.
With symbolic M the function holds two versions: `if M < MR` single-row tiles (decode: the weight streams
once, no arithmetic on padding rows), else the MR-row tiles.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target
from tvm.target.codegen import target_has_features


@dataclass(frozen=True)
class MatmulConfig:
    mr: int = 4  # rows per register tile (symbolic m)
    nr: int = 2  # weight rows per register tile
    gemv_nr: int = 4  # weight rows per tile with single-row tiles (m = 1, or the m < MR version)
    l2_bytes: int = 256 * 1024  # budget for one block of weight rows (kept in L2 across the m tiles)
    min_blocks: int = 8  # at least this many parallel blocks along n when N allows it


def _const(expr) -> int | None:
    return int(expr) if isinstance(expr, (int, tirx.IntImm)) else None


def _index_vars(region) -> list[tirx.Var | None]:
    """The block vars indexing an access region, constant indices skipped; [None] unless every dimension is a
    unit access by one var or a constant."""
    out = []
    for r in region:
        if _const(r.extent) != 1:
            return [None]
        if isinstance(r.min, tirx.Var):
            out.append(r.min)
        elif _const(r.min) is None:
            return [None]
    return out


@dataclass
class _Matmul:
    """Roles of a matched NT-matmul block: iters are positions into the block's iter_vars."""

    rows: list[int]  # the m iters (symbolic or static, > 1 or not), in block order
    unit: list[int]  # iters of extent 1
    n: int
    k: int


def match_nt_matmul(block: s_tir.SBlock) -> _Matmul | None:
    """C[rows..., n] (+)= X[rows..., k] * W[n, k]: W is the read indexed by exactly (n, k) with n a static
    spatial iter the other read does not use; X's last index is k. Other layouts are left to other rules."""
    iters = block.iter_vars

    def positions(region) -> list[int] | None:
        out = []
        for var in _index_vars(region):
            found = [i for i, iv in enumerate(iters) if var is not None and iv.var.same_as(var)]
            if not found:
                return None
            out.append(found[0])
        return out

    reduce = [i for i, iv in enumerate(iters) if iv.iter_type == tirx.IterVar.CommReduce]
    spatial = [i for i, iv in enumerate(iters) if iv.iter_type == tirx.IterVar.DataPar]
    if len(reduce) != 1 or len(spatial) + 1 != len(iters) or len(block.writes) != 1:
        return None
    k = reduce[0]
    out = block.writes[0]
    reads = [r for r in block.reads if not r.source.same_as(out.source)]
    if len(reads) != 2 or _const(iters[k].dom.extent) is None:
        return None
    accessed = [positions(r.region) for r in reads]
    written = positions(out.region)
    if written is None or sorted(written) != spatial or any(not a or a[-1] != k for a in accessed):
        return None
    for w, x in ((0, 1), (1, 0)):
        wv, xv = accessed[w], accessed[x]
        if len(wv) != 2 or wv[0] in xv or _const(iters[wv[0]].dom.extent) is None:
            continue
        n = wv[0]
        if len(set(xv)) != len(xv) or k in xv[:-1]:
            continue
        others = [i for i in spatial if i != n]
        if any(i not in xv and _const(iters[i].dom.extent) != 1 for i in others):
            return None  # a batch axis the weight does not have (batched matmul): not ours
        unit = [i for i in others if _const(iters[i].dom.extent) == 1]
        rows = [i for i in others if i not in unit]
        return _Matmul(rows=rows, unit=unit, n=n, k=k)
    return None


def _largest_divisor(n: int, cap: int) -> int:
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def _vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """SIMD lanes for the element type (llvm_get_vector_width answers 512 for every x86 cpu in TVM 0.27)."""
    bits = 128  # SSE2 / NEON baseline
    try:
        if target_has_features("avx512f", target):
            bits = 512
        elif target_has_features("avx", target):
            bits = 256
    except Exception:  # pylint: disable=broad-except
        pass
    return max(1, bits // dtype_bits)


class Matmul(CPUScheduleRule):
    """Register-blocked, vectorized, parallel schedule for NT matmuls with symbolic or static m."""

    def __init__(self, config: MatmulConfig | None = None) -> None:
        self.config = config or MatmulConfig()

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        tiled = self._try(func, target, self.config.mr)
        if tiled is None:
            return None
        sch, rows = tiled
        if rows is not None and self.config.mr > 1:
            # Symbolic m: a second copy with single-row tiles for m < MR (decode, last-token logits), where
            # MR-row tiles would multiply the arithmetic on padding rows while the weight streams from memory.
            single = self._try(func, target, 1)
            if single is not None:
                big, small = sch.mod["main"], single[0].mod["main"]
                root_big, root_small = big.body.block, small.body.block
                body = tirx.IfThenElse(single[1] < self.config.mr, root_small.body, root_big.body)
                root = s_tir.SBlock([], [], [], "root", body,
                                    alloc_buffers=list(root_small.alloc_buffers) + list(root_big.alloc_buffers))
                sch = s_tir.Schedule(big.with_body(s_tir.SBlockRealize([], True, root)))
        return sch

    def _try(self, func: tirx.PrimFunc, target: Target, mr: int):
        """(schedule, number of rows if symbolic else None), or None where the rule does not apply."""
        sch = s_tir.Schedule(func)
        infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if not infos:
            return None
        reductions = [i for i, info in enumerate(infos) if not info.is_injective()]
        if reductions != [0]:  # one reduction, any prologue inlined, the rest is an elementwise epilogue
            return None
        block = infos[0].block_rv
        epilogues = [info.block_rv for info in infos[1:]]
        match = match_nt_matmul(sch.get(block))
        if match is None:
            return None
        iters = sch.get(block).iter_vars
        rows = None
        for i in match.rows:
            rows = iters[i].dom.extent if rows is None else rows * iters[i].dom.extent
        try:
            self._schedule(sch, target, block, epilogues, match, mr)
        except Exception:  # pylint: disable=broad-except
            return None  # a form this rule did not foresee: leave the function to the next rules
        return sch, (rows if rows is not None and _const(rows) is None else None)

    def _schedule(self, sch: s_tir.Schedule, target: Target, block, epilogues, match: _Matmul, mr: int) -> None:
        cfg = self.config
        iters = sch.get(block).iter_vars
        n_ext, k_ext = int(iters[match.n].dom.extent), int(iters[match.k].dom.extent)
        m_static = 1
        for i in match.rows:
            ext = _const(iters[i].dom.extent)
            m_static = None if ext is None or m_static is None else m_static * ext
        lanes = _vector_lanes(target, sch.get(block).writes[0].source.dtype.bits)
        vl = lanes
        while k_ext % vl:  # a power of two dividing K: K = 100 runs 4 lanes
            vl //= 2
        if m_static == 1 or mr == 1:
            mr, nr = 1, _largest_divisor(n_ext, cfg.gemv_nr)
        else:
            nr = _largest_divisor(n_ext, cfg.nr)
        # NB: weight rows per parallel block (a multiple of NR dividing N), L2-sized, enough blocks to share out.
        nb_rows = max(nr, min(cfg.l2_bytes // max(1, k_ext * 4), n_ext // cfg.min_blocks) // nr * nr)
        while n_ext % nb_rows:
            nb_rows -= nr
        # Pad the innermost row axis to a multiple of MR (only the activation gets a padded copy).
        pad_rows = mr > 1 and (m_static is None or m_static % mr != 0)
        if pad_rows and match.rows:
            padding = [1] * len(iters)
            padding[match.rows[-1]] = mr
            sch.pad_einsum(block, padding)
            for producer in sch.get_producers(block):
                if sch.get(producer).name_hint.endswith("_pad"):
                    x_pad = producer
                    break
            else:
                x_pad = None
            unpad = sch.get_consumers(block)
            if epilogues:  # the un-pad copy feeds the epilogue: read the padded result directly
                for u in unpad:
                    sch.compute_inline(u)
            else:
                epilogues = list(unpad)
        else:
            x_pad = None

        loops = sch.get_loops(block)
        order = match.unit + match.rows + [match.n, match.k]
        sch.reorder(*[loops[i] for i in order])
        loops = sch.get_loops(block)
        m_loops = loops[: len(match.unit) + len(match.rows)]
        if not m_loops:  # static single row: a unit loop on top stands for m
            m = sch.add_unit_loop(loops[0])
        else:
            m = sch.fuse(*m_loops) if len(m_loops) > 1 else m_loops[0]
        n, k = sch.get_loops(block)[-2:]
        ko, kv = sch.split(k, [None, vl])
        rf = sch.rfactor(kv, len(sch.get(block).writes[0].region))  # rf buffer [..., lanes]: lanes innermost
        m, n, ko, kv = sch.get_loops(rf)[-4:]
        mo, mi = sch.split(m, [None, mr])
        nb, no, ni = sch.split(n, [None, nb_rows // nr, nr])
        sch.reorder(nb, mo, no, ko, mi, ni, kv)
        if x_pad is not None:
            sch.compute_at(x_pad, mo)
            inner = sch.get_loops(x_pad)[-1]
            _, vec = sch.split(inner, [None, vl])
            sch.vectorize(vec)
        sch.reverse_compute_at(block, no)
        for epilogue in epilogues:
            sch.reverse_compute_at(epilogue, no)
        # The tile buffers (accumulators, sums, padded activations) keep the default "global" scope: compacted
        # to the tile and allocated inside the parallel loop, TVM 0.27 lowers small constant-size "global"
        # allocations to stack allocas (registers after LLVM's SROA) but every "local" one to a
        # TVMBackendAllocWorkspace call, whose pointers LLVM cannot tell apart: the accumulators then go through
        # memory on every FMA (2.7x slower, depending on what else is in the LLVM module).
        sch.parallel(nb)
        sch.unroll(mi)
        sch.unroll(ni)
        sch.vectorize(kv)
        init = sch.decompose_reduction(rf, ko)
        sch.vectorize(sch.get_loops(init)[-1])


__all__ = ["Matmul", "MatmulConfig", "match_nt_matmul"]
