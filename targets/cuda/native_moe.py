"""cuda lowering of the mixture-of-experts ops (ir/ops_moe.py) onto kernels/moe.cuh.

`moe` with fp16/bf16 expert weights and `quant_moe` (q4f16, q4f16_1, q4f16g128, q8f16: groups of a multiple of 32)
with fp16 or bf16 activations, H and I multiples of 32, at most 1024 experts, become one opaque PrimFunc on the
device; the routing (expert ids and weights), the slot order and the SwiGLU activations live in scratch outputs of
it, so nothing is read back by the host and CUDA graphs keep working. Five plans (see moe.cuh); each is checked
alone at 1 to 200 tokens a call against float64 numpy on a GPU by tools/moe_kernel_check.py:
- gemv (decode1 with 4-/8-bit experts and fp16 activations): route, then gemv.cuh's tuned GEMV run for every
  slot's expert (gate and up; down staging silu(gate) * up), combine;
- per slot (bf16 activations, and whatever the other plans do not take): route, gate_up, down: plain warp-per-row
  GEMVs over the rows of each slot's expert;
- grouped (batched decode and prefill, and decode1 of fp16 experts; fp16 activations with 4-/8-bit or fp16
  experts, H and I multiples of 64): route, sort (slots in expert order, tiles per expert), the gated gate_up GEMM, the down GEMM, combine. Two tile shapes,
  chosen on the device-side token count: 16-row tiles while experts get few rows each (batched decode), 64-row
  ones from GROUPED_LARGE_ROWS rows per expert on average.
- kgemv (a GGUF file's experts kept native in kgemv.cuh's formats, Q5_0, Q5_1, Q4_K .. Q6_K, each weight in its
  own: a Q4_K_M file's Q4_K gate/up and Q6_K down): route, kgemv.cuh's GEMV over every slot's expert (gate, up;
  down staging silu(gate) * up), combine; in prefill and batched decode from DEQUANT_SLOTS_PER_EXPERT slots per
  expert, every expert dequantized to fp16 scratch (moe.cuh's dequant) and the grouped plan's fp16 GEMMs.
- per weight (the other GGUF formats, Q2_K and Q3_K, or one beside a 4-/8-bit weight; K a multiple of 256 for
  K-quants): route, gate_up_any, down_any, warp-per-row GEMVs with each weight's own dequantization.
Everything else returns None (the generic lowering refuses it in one line). EMBER_CUDA_MOE=0 turns the override
off (then a MoE model does not build for cuda: there is no other kernel); EMBER_CUDA_MOE=slots keeps the per-slot
plan everywhere (A/B runs).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ...ir.ops_moe import WEIGHT_FORMATS, moe_formats
from ...ir.ops_quant import QuantFormat
from ..extern_op import extern
from .extern_kernel import ATTRS, launch
from . import native_gemv, native_kgemv
from .native_gemv import is_decode1

ENV = "EMBER_CUDA_MOE"
Q4, Q4_1, Q8, F16, BF16 = 0, 1, 2, 3, 4  # moe.cuh's Fmt
Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K = 5, 6, 7, 8, 9, 10, 11  # moe.cuh's WideFmt (the GGUF formats kept native)
WIDE = {(5, False, 0): Q5_0, (5, True, 0): Q5_1, (4, True, 256): Q4_K, (5, True, 256): Q5_K, (6, False, 256): Q6_K,
        (2, True, 256): Q2_K, (3, False, 256): Q3_K}
PIECES = ("qweight", "qhigh", "scales", "mins", "super", "super_mins")  # moe.cuh's Weight order
ACTIVATION = {"float16": "half", "bfloat16": "__nv_bfloat16"}
WARPS = 8  # rows per block of gate_up and down (one warp a row)
ROUTE_WARPS = 4  # tokens per block of route
MAX_EXPERTS = 1024
SORT_THREADS = 1024  # one per expert
COMBINE_THREADS = 256


@dataclass(frozen=True)
class GroupedTile:
    bm: int  # rows (slots in expert order) per block
    bn: int  # output columns per block
    wm: int  # warps along the rows
    wn: int  # warps along the columns

    def stages(self, code: int, gated: bool) -> int:
        """cp.async ring depth that keeps the block's static shared memory under 48 KiB."""
        weight_bytes = {Q8: 32, F16: 64}.get(code, 16) * self.bn * (2 if gated else 1)
        return max(s for s in (2, 3, 4) if s * (self.bm * 64 + weight_bytes) <= 48 * 1024)


SMALL_TILE = GroupedTile(16, 64, 1, 4)
LARGE_TILE = GroupedTile(64, 64, 2, 2)
GROUPED_LARGE_ROWS = 48  # average rows per expert from which the 64-row tiles run
GROUPED_FORMATS = (Q4, Q4_1, Q8, F16)
GEMV_FORMATS = (Q4, Q4_1, Q8)  # gemv.cuh's schemes, same codes as moe.cuh's Fmt
KGEMV_FORMATS = (Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)  # kgemv.cuh's, same codes
# The kgemv plan's slots per expert (on average) from which prefill dequantizes the experts to fp16 and runs the
# grouped GEMM: per slot, a call reads slots x an expert's packed bytes; dequantized, every expert's packed bytes
# once plus their fp16 copy written and read (about 7x a 4-bit weight): even at about 8 slots per expert.
DEQUANT_SLOTS_PER_EXPERT = 8
DEQUANT_THREADS = 256


def _format(node: Any, weight_dtype: str) -> tuple[int, int, int] | None:
    """(Fmt, group, pieces per weight), or None where moe.cuh does not take the weights."""
    if node.op == "moe":
        code = {"float16": F16, "bfloat16": BF16}.get(weight_dtype)
        return None if code is None else (code, 0, 1)
    fmt = QuantFormat.from_attrs(node.attrs)
    if WEIGHT_FORMATS in node.attrs or fmt.bits not in (4, 8) or fmt.super_block or fmt.group_size % 32:
        return None  # the per-weight plan (_any_compute) takes these
    return (Q8 if fmt.bits == 8 else Q4_1 if fmt.has_min else Q4), fmt.group_size, fmt.num_pieces


def _any_code(fmt: QuantFormat, cols: int) -> int | None:
    """moe.cuh's format code of one weight (any of them) with `cols` input features, or None."""
    if fmt.bits in (5, 6) or fmt.super_block:
        code = WIDE.get((fmt.bits, fmt.has_min, fmt.super_block))
        whole = fmt.group_size == (16 if code in (Q6_K, Q2_K, Q3_K) else 32) and cols % max(fmt.super_block, 32) == 0
        return code if code is not None and whole else None
    if fmt.group_size % 32 or cols % 32:
        return None
    return Q8 if fmt.bits == 8 else Q4_1 if fmt.has_min else Q4


def lower(it: Any, node: Any, args: list) -> Any:
    if os.environ.get(ENV, "1") == "0":
        return None
    x, logits, weights = args[0], args[1], list(args[2:])
    if x.dtype not in ACTIVATION or logits.dtype != x.dtype:
        return None
    planned = _format(node, weights[0].dtype)
    if planned is None:
        return _lower_any(node, x, logits, weights) if node.op == "quant_moe" else None
    code, group, per = planned
    experts, inter = int(weights[0].shape[0]), int(weights[0].shape[1])
    hidden = int(x.shape[-1])
    if hidden % 32 or inter % 32 or experts > MAX_EXPERTS:
        return None
    top_k, norm = int(node.attrs["top_k"]), int(bool(node.attrs["norm_topk_prob"]))
    act = ACTIVATION[x.dtype]
    plan = _Plan(code, group, per, experts, hidden, inter, top_k, norm, act)
    compute = _choose(plan, x.dtype, is_decode1(list(x.shape[:-1])))
    out = op.tensor_expr_op(compute, f"{node.attrs.get('scheme', weights[0].dtype)}_moe", [x, logits, *weights],
                            attrs=ATTRS)
    return out[0] if isinstance(out, (list, tuple)) else out


@dataclass(frozen=True)
class _Plan:
    code: int  # moe.cuh's Fmt
    group: int
    per: int  # pieces per weight
    experts: int
    hidden: int
    inter: int
    top_k: int
    norm: int
    act: str  # the activations' C++ type


def _choose(plan: _Plan, dtype: str, decode1: bool):
    """The compute of the fastest plan that takes the block (EMBER_CUDA_MOE=slots: per slot everywhere)."""
    if os.environ.get(ENV, "1") == "slots" or dtype != "float16":
        return _per_slot_compute(plan)
    if decode1 and plan.code in GEMV_FORMATS and _gemv_fits(plan):
        return _gemv_compute(plan)
    if plan.code in GROUPED_FORMATS and plan.hidden % 64 == 0 and plan.inter % 64 == 0:
        return _grouped_compute(plan)
    return _per_slot_compute(plan)


def _gemv_fits(plan: _Plan) -> bool:
    values = native_gemv.VALUES_PER_LOAD[plan.code]
    return (plan.group % values == 0 and plan.hidden % values == 0 and plan.inter % values == 0
            and all(native_gemv.shared_bytes(plan.code, k, native_gemv.choose_config(plan.code, n, k))
                    <= native_gemv.SHARED_LIMIT for n, k in ((plan.inter, plan.hidden), (plan.hidden, plan.inter))))


def _gemv_args(cfg: native_gemv.GemvConfig) -> str:
    return f"{cfg.warps}, {cfg.rows}, {cfg.depth}, {cfg.per}, {cfg.async_copy}"


def _gemv_compute(plan: _Plan):
    """decode1: route, gemv.cuh's GEMV over every slot's expert for gate and up, the down GEMV staging
    silu(gate) * up, combine."""
    hidden, inter, k = plan.hidden, plan.inter, plan.top_k
    up_cfg = native_gemv.choose_config(plan.code, inter, hidden)
    down_cfg = native_gemv.choose_config(plan.code, hidden, inter)
    shape = f"{plan.code}, {hidden}, {inter}, {plan.group}, {k}"
    gate_up = f"ember::moe::gemv_gate_up<{shape}, {_gemv_args(up_cfg)}>"
    down = f"ember::moe::gemv_down<{shape}, {_gemv_args(down_cfg)}>"
    combine = f"ember::moe::combine<{hidden}, {k}, {plan.act}, 0>"

    def compute(xt: te.Tensor, lg: te.Tensor, *packed: te.Tensor) -> Any:
        lead, tokens = _tokens(xt)
        slots = tokens * k

        def body(ins, outs):
            xb, lgb, pieces = ins[0], ins[1], list(ins[2:])
            y, ids, wts, gu, ys = outs
            ptrs = _weight_pointers(plan, pieces)
            t = tirx.Cast("int32", tokens)
            return tirx.SeqStmt([
                _route(plan, t, lgb, ids, wts),
                launch(tirx.call_extern("int32", gate_up, t, xb.access_ptr("r"), ids.access_ptr("r"), *ptrs[0],
                                        *ptrs[1], gu.access_ptr("w")), t * k * 2 * up_cfg.blocks(inter),
                       up_cfg.threads),
                launch(tirx.call_extern("int32", down, t, gu.access_ptr("r"), ids.access_ptr("r"), *ptrs[2],
                                        ys.access_ptr("w")), t * k * down_cfg.blocks(hidden), down_cfg.threads),
                launch(tirx.call_extern("int32", combine, t, ids.access_ptr("r"), wts.access_ptr("r"),
                                        ys.access_ptr("r"), y.access_ptr("w")),
                       tirx.floordiv(t * (hidden // 2) + COMBINE_THREADS - 1, COMBINE_THREADS), COMBINE_THREADS),
            ])

        shapes = [lead + [hidden], [slots], [slots], [slots, 2 * inter], [slots, hidden]]
        dtypes = [xt.dtype, "int32", "float32", "float16", "float16"]
        return extern(shapes, [xt, lg, *packed], body, dtype=dtypes, name="ember_moe_gemv")

    return compute


def _weight_pointers(plan: _Plan, pieces: list) -> list[list[Any]]:
    """(codes, scales, mins) pointers of gate, up and down; a piece a format lacks points at the codes."""
    per, ptrs = plan.per, []
    for i in range(3):
        w = pieces[i * per:(i + 1) * per]
        ptrs.append([w[0].access_ptr("r"), (w[1] if per > 1 else w[0]).access_ptr("r"),
                     (w[2] if per > 2 else w[0]).access_ptr("r")])
    return ptrs


def _route(plan: _Plan, t: Any, logits: Any, ids: Any, wts: Any) -> Any:
    route = f"ember::moe::route<{plan.experts}, {plan.top_k}, {plan.norm}, {plan.act}>"
    return launch(tirx.call_extern("int32", route, t, logits.access_ptr("r"), ids.access_ptr("w"),
                                   wts.access_ptr("w")), tirx.floordiv(t + ROUTE_WARPS - 1, ROUTE_WARPS),
                  32 * ROUTE_WARPS)


def _tokens(xt: te.Tensor) -> tuple[list[Any], Any]:
    lead = list(xt.shape[:-1])
    return lead, (math.prod(lead) if lead else 1)


def _per_slot_compute(plan: _Plan):
    code, group, experts, hidden, inter, top_k, act = (plan.code, plan.group, plan.experts, plan.hidden,
                                                        plan.inter, plan.top_k, plan.act)

    def compute(xt: te.Tensor, lg: te.Tensor, *packed: te.Tensor) -> Any:
        lead, tokens = _tokens(xt)
        slots = tokens * top_k

        def body(ins, outs):
            xb, lgb, pieces = ins[0], ins[1], list(ins[2:])
            y, ids, wts, h = outs
            ptrs = _weight_pointers(plan, pieces)
            t = tirx.Cast("int32", tokens)
            gate_up = f"ember::moe::gate_up<{code}, {hidden}, {inter}, {top_k}, {WARPS}, {act}>"
            down = f"ember::moe::down<{code}, {hidden}, {inter}, {top_k}, {WARPS}, {act}>"
            return tirx.SeqStmt([
                _route(plan, t, lgb, ids, wts),
                launch(tirx.call_extern("int32", gate_up, t, xb.access_ptr("r"), ids.access_ptr("r"), *ptrs[0],
                                        *ptrs[1], tirx.const(group, "int32"), h.access_ptr("w")),
                       t * (top_k * (-(-inter // WARPS))), 32 * WARPS),
                launch(tirx.call_extern("int32", down, t, h.access_ptr("r"), ids.access_ptr("r"),
                                        wts.access_ptr("r"), *ptrs[2], tirx.const(group, "int32"),
                                        y.access_ptr("w")), t * (-(-hidden // WARPS)), 32 * WARPS),
            ])

        shapes = [lead + [hidden], [slots], [slots], [slots, inter]]
        return extern(shapes, [xt, lg, *packed], body, dtype=[xt.dtype, "int32", "float32", "float32"],
                      name="ember_moe")

    return compute


def _tiles_bound(slots: Any, bm: int, experts: int) -> Any:
    """Most bm-row tiles the slots can make: every expert with rows adds at most one partial tile."""
    return tirx.floordiv(slots + bm - 1, bm) + tirx.min(slots, experts)


def _grouped_steps(plan: _Plan, tile: GroupedTile, t: Any, slots: Any, ptrs: list, bufs: dict) -> list[Any]:
    """sort, gate_up and down of one tile shape."""
    e, hidden, inter, k = plan.experts, plan.hidden, plan.inter, plan.top_k
    bound = _tiles_bound(slots, tile.bm, e)
    shape = f"{tile.bm}, {tile.bn}, {tile.wm}, {tile.wn}"
    gate_up = (f"ember::moe::gemm<{plan.code}, {inter}, {hidden}, 1, {k}, {shape}, "
               f"{tile.stages(plan.code, True)}>")
    down = f"ember::moe::gemm<{plan.code}, {hidden}, {inter}, 0, {k}, {shape}, {tile.stages(plan.code, False)}>"
    group = tirx.const(plan.group or 32, "int32")
    r = {name: buf.access_ptr("r") for name, buf in bufs.items()}
    threads = 32 * tile.wm * tile.wn
    return [
        launch(tirx.call_extern("int32", f"ember::moe::sort<{e}, {k}, {tile.bm}>", t, r["ids"],
                                bufs["rows"].access_ptr("w"), bufs["pos"].access_ptr("w"),
                                bufs["tiles"].access_ptr("w"), bufs["count"].access_ptr("w")), 1, SORT_THREADS),
        launch(tirx.call_extern("int32", gate_up, bound, r["tiles"], r["count"], r["rows"], r["x"], *ptrs[0],
                                *ptrs[1], group, bufs["h"].access_ptr("w")), bound * (inter // tile.bn), threads),
        launch(tirx.call_extern("int32", down, bound, r["tiles"], r["count"], r["rows"], r["h"], *ptrs[2],
                                *ptrs[2], group, bufs["ys"].access_ptr("w")), bound * (hidden // tile.bn), threads),
    ]


def _grouped_compute(plan: _Plan):
    hidden, inter, k = plan.hidden, plan.inter, plan.top_k

    def compute(xt: te.Tensor, lg: te.Tensor, *packed: te.Tensor) -> Any:
        lead, tokens = _tokens(xt)
        slots = tokens * k

        def body(ins, outs):
            xb, lgb, pieces = ins[0], ins[1], list(ins[2:])
            y, ids, wts, rows, pos, tiles, count, h, ys = outs
            ptrs = _weight_pointers(plan, pieces)
            t = tirx.Cast("int32", tokens)
            s = t * k
            bufs = {"x": xb, "ids": ids, "rows": rows, "pos": pos, "tiles": tiles, "count": count, "h": h, "ys": ys}
            large = s >= GROUPED_LARGE_ROWS * plan.experts
            combine = f"ember::moe::combine<{hidden}, {k}, {plan.act}>"
            pairs = t * (hidden // 2)
            return tirx.SeqStmt([
                _route(plan, t, lgb, ids, wts),
                tirx.IfThenElse(large, tirx.SeqStmt(_grouped_steps(plan, LARGE_TILE, t, s, ptrs, bufs)),
                                tirx.SeqStmt(_grouped_steps(plan, SMALL_TILE, t, s, ptrs, bufs))),
                launch(tirx.call_extern("int32", combine, t, pos.access_ptr("r"), wts.access_ptr("r"),
                                        ys.access_ptr("r"), y.access_ptr("w")),
                       tirx.floordiv(pairs + COMBINE_THREADS - 1, COMBINE_THREADS), COMBINE_THREADS),
            ])

        bound = tirx.floordiv(slots + SMALL_TILE.bm - 1, SMALL_TILE.bm) + plan.experts  # >= either tile's bound
        shapes = [lead + [hidden], [slots], [slots], [slots], [slots], [3 * bound], [1], [slots, inter],
                  [slots, hidden]]
        dtypes = [xt.dtype, "int32", "float32", "int32", "int32", "int32", "int32", "float16", "float16"]
        return extern(shapes, [xt, lg, *packed], body, dtype=dtypes, name="ember_moe_grouped")

    return compute


def _lower_any(node: Any, x: Any, logits: Any, weights: list) -> Any:
    """The per-weight plan: route, gate_up_any, down_any (moe.cuh), each weight in its own format, any token count."""
    hidden, inter = int(node.attrs["hidden"]), int(node.attrs["intermediate"])
    experts = int(weights[0].shape[0])
    formats = moe_formats(node.attrs)
    codes = [_any_code(f, cols) for f, cols in zip(formats, (hidden, hidden, inter))]
    if any(c is None for c in codes) or hidden % 32 or inter % 32 or experts > MAX_EXPERTS:
        return None
    plan = _Plan(codes[0], formats[0].group_size, formats[0].num_pieces, experts, hidden, inter,
                 int(node.attrs["top_k"]), int(bool(node.attrs["norm_topk_prob"])), ACTIVATION[x.dtype])
    weights_of = [(c, f.group_size, f.piece_names) for c, f in zip(codes, formats)]
    if x.dtype == "float16" and _kgemv_fits(codes, hidden, inter):
        dequant = (not is_decode1(list(x.shape[:-1])) and hidden % 64 == 0 and inter % 64 == 0
                   and all(c in WIDE.values() for c in codes))
        compute = _kgemv_compute(plan, weights_of, dequant)
    else:
        compute = _any_compute(plan, weights_of)
    name = node.attrs["scheme"].replace("+", "_")
    out = op.tensor_expr_op(compute, f"{name}_moe", [x, logits, *weights], attrs=ATTRS)
    return out[0] if isinstance(out, (list, tuple)) else out


def _kgemv_fits(codes: list[int], hidden: int, inter: int) -> bool:
    """Whether kgemv.cuh takes all three weights (its formats, its static shared memory for x)."""
    return (all(c in KGEMV_FORMATS for c in codes)
            and all(native_kgemv.shared_bytes(c, k) <= native_gemv.SHARED_LIMIT
                    for c, k in zip(codes, (hidden, hidden, inter))))


def _kgemv_compute(plan: _Plan, weights: list[tuple[int, int, tuple[str, ...]]], dequant: bool):
    """route, kgemv.cuh's GEMV over every slot's expert for gate and up (each in its format), the down GEMV staging
    silu(gate) * up, combine (the gemv plan's steps with the GGUF formats). `dequant` (prefill and batched decode):
    from DEQUANT_SLOTS_PER_EXPERT slots per expert on average, every expert dequantized to fp16 scratch instead
    (moe.cuh's dequant, reading each weight once) and the grouped plan's fp16 GEMMs."""
    (fg, _, gate_names), (fu, _, up_names), (fd, _, down_names) = weights
    hidden, inter, k = plan.hidden, plan.inter, plan.top_k
    up_cfg = native_kgemv.choose_config(fg, inter, hidden)
    down_cfg = native_kgemv.choose_config(fd, hidden, inter)
    cfg = lambda c: f"{c.warps}, {c.rows}, {c.depth}"  # noqa: E731
    gate_up = f"ember::moe::kgemv_gate_up<{fg}, {fu}, {hidden}, {inter}, {k}, {cfg(up_cfg)}>"
    down = f"ember::moe::kgemv_down<{fd}, {hidden}, {inter}, {k}, {cfg(down_cfg)}>"
    combine = f"ember::moe::combine<{hidden}, {k}, {plan.act}, 0>"

    def compute(xt: te.Tensor, lg: te.Tensor, *packed: te.Tensor) -> Any:
        lead, tokens = _tokens(xt)
        slots = tokens * k

        def body(ins, outs):
            xb, lgb, rest = ins[0], ins[1], list(ins[2:])
            y, ids, wts, gu, ys = outs[:5]
            gate_p, up_p, down_p = _split_pointers(rest, (gate_names, up_names, down_names))
            t = tirx.Cast("int32", tokens)
            per_slot = tirx.SeqStmt([
                launch(tirx.call_extern("int32", gate_up, t, xb.access_ptr("r"), ids.access_ptr("r"), *gate_p, *up_p,
                                        gu.access_ptr("w")), t * k * 2 * up_cfg.blocks(inter), up_cfg.threads),
                launch(tirx.call_extern("int32", down, t, gu.access_ptr("r"), ids.access_ptr("r"), *down_p,
                                        ys.access_ptr("w")), t * k * down_cfg.blocks(hidden), down_cfg.threads),
                launch(tirx.call_extern("int32", combine, t, ids.access_ptr("r"), wts.access_ptr("r"),
                                        ys.access_ptr("r"), y.access_ptr("w")),
                       tirx.floordiv(t * (hidden // 2) + COMBINE_THREADS - 1, COMBINE_THREADS), COMBINE_THREADS),
            ])
            if not dequant:
                return tirx.SeqStmt([_route(plan, t, lgb, ids, wts), per_slot])
            rows, pos, tiles, count, h, wg, wu, wd = outs[5:]
            s = t * k
            f16 = _Plan(F16, 0, 1, *dataclasses.astuple(plan)[3:])
            steps = []
            for (code, _, _), ptrs, out, (n, cols) in zip(weights, (gate_p, up_p, down_p), (wg, wu, wd),
                                                          ((inter, hidden), (inter, hidden), (hidden, inter))):
                blocks = -(-(plan.experts * n * (cols // 32)) // DEQUANT_THREADS)
                steps.append(launch(tirx.call_extern("int32", f"ember::moe::dequant<{code}, {cols}>",
                                                     tirx.const(plan.experts * n, "int64"), *ptrs,
                                                     out.access_ptr("w")), blocks, DEQUANT_THREADS))
            half_ptrs = [[w.access_ptr("r")] * 3 for w in (wg, wu, wd)]
            bufs = {"x": xb, "ids": ids, "rows": rows, "pos": pos, "tiles": tiles, "count": count, "h": h,
                    "ys": ys}
            large = s >= GROUPED_LARGE_ROWS * plan.experts
            grouped = tirx.SeqStmt(steps + [
                tirx.IfThenElse(large, tirx.SeqStmt(_grouped_steps(f16, LARGE_TILE, t, s, half_ptrs, bufs)),
                                tirx.SeqStmt(_grouped_steps(f16, SMALL_TILE, t, s, half_ptrs, bufs))),
                launch(tirx.call_extern("int32", f"ember::moe::combine<{hidden}, {k}, {plan.act}>", t,
                                        pos.access_ptr("r"), wts.access_ptr("r"), ys.access_ptr("r"),
                                        y.access_ptr("w")),
                       tirx.floordiv(t * (hidden // 2) + COMBINE_THREADS - 1, COMBINE_THREADS), COMBINE_THREADS),
            ])
            return tirx.SeqStmt([_route(plan, t, lgb, ids, wts),
                                 tirx.IfThenElse(s >= DEQUANT_SLOTS_PER_EXPERT * plan.experts, grouped, per_slot)])

        shapes = [lead + [hidden], [slots], [slots], [slots, 2 * inter], [slots, hidden]]
        dtypes = [xt.dtype, "int32", "float32", "float16", "float16"]
        if dequant:
            bound = tirx.floordiv(slots + SMALL_TILE.bm - 1, SMALL_TILE.bm) + plan.experts
            e = plan.experts
            shapes += [[slots], [slots], [3 * bound], [1], [slots, inter], [e, inter, hidden], [e, inter, hidden],
                       [e, hidden, inter]]
            dtypes += ["int32", "int32", "int32", "int32", "float16", "float16", "float16", "float16"]
        return extern(shapes, [xt, lg, *packed], body, dtype=dtypes, name="ember_moe_kgemv")

    return compute


def _split_pointers(tensors: list, names: tuple[tuple[str, ...], ...]) -> list[list[Any]]:
    """Each weight's six pointers in moe.cuh's Weight order (a piece it lacks: its first tensor)."""
    out, at = [], 0
    for weight in names:
        named = dict(zip(weight, tensors[at:at + len(weight)]))
        out.append([named.get(n, tensors[at]).access_ptr("r") for n in PIECES])
        at += len(weight)
    return out


def _any_compute(plan: _Plan, weights: list[tuple[int, int, tuple[str, ...]]]):
    (fg, gg, gate_names), (fu, gu_, up_names), (fd, gd, down_names) = weights
    hidden, inter, top_k, act = plan.hidden, plan.inter, plan.top_k, plan.act
    gate_up = f"ember::moe::gate_up_any<{fg}, {fu}, {hidden}, {inter}, {top_k}, {WARPS}, {act}>"
    down = f"ember::moe::down_any<{fd}, {hidden}, {inter}, {top_k}, {WARPS}, {act}>"

    def compute(xt: te.Tensor, lg: te.Tensor, *packed: te.Tensor) -> Any:
        lead, tokens = _tokens(xt)
        slots = tokens * top_k

        def body(ins, outs):
            xb, lgb, rest = ins[0], ins[1], list(ins[2:])
            y, ids, wts, h = outs
            gate_p, up_p, down_p = _split_pointers(rest, (gate_names, up_names, down_names))
            t = tirx.Cast("int32", tokens)
            return tirx.SeqStmt([
                _route(plan, t, lgb, ids, wts),
                launch(tirx.call_extern("int32", gate_up, t, xb.access_ptr("r"), ids.access_ptr("r"), *gate_p,
                                        tirx.const(gg, "int32"), *up_p, tirx.const(gu_, "int32"),
                                        h.access_ptr("w")),
                       t * (top_k * (-(-inter // WARPS))), 32 * WARPS),
                launch(tirx.call_extern("int32", down, t, h.access_ptr("r"), ids.access_ptr("r"),
                                        wts.access_ptr("r"), *down_p, tirx.const(gd, "int32"), y.access_ptr("w")),
                       t * (-(-hidden // WARPS)), 32 * WARPS),
            ])

        shapes = [lead + [hidden], [slots], [slots], [slots, inter]]
        return extern(shapes, [xt, lg, *packed], body, dtype=[xt.dtype, "int32", "float32", "float32"],
                      name="ember_moe_any")

    return compute


LOWERINGS = {"moe": lower, "quant_moe": lower}
