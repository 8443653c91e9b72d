"""Lowerings of ir/ops_collective.py: the collectives become calls of packed functions named by the target.

    all_reduce(x)   -> call_dps_packed(<all_reduce>, x, ShapeTuple([0]) (sum), in_group=True) -> out
    all_gather(x)   -> call_dps_packed(<all_gather>, x as [1, ...], in_group=True) -> [shards, ...], moved to the
                       last axis (Disco's allgather concatenates on axis 0)
These are the arguments Relax's own ccl ops legalize to (`runtime.disco.allreduce` / `allgather`), so a GPU build
calls Disco's collectives inside a Disco worker (NCCL where the runtime registers it) and a cpu build calls
ember's host collectives (runtime/tensor_parallel.py) with the same signature: the IR and its lowering are the same.
`vocab_shard` is one small elementwise kernel.
"""
from __future__ import annotations

from tvm import relax, te, tirx
from tvm.relax.frontend.nn import op

from .lower import lowers

SUM = 0  # Disco's ReduceKind::kSum


def _in_group() -> relax.PrimValue:
    return relax.prim_value(tirx.IntImm("bool", 1))


@lowers("all_reduce")
def _all_reduce(it, node, args):
    (x,) = args
    call = relax.call_dps_packed(it.collectives["all_reduce"], [x._expr, relax.ShapeExpr([SUM]), _in_group()],
                                 out_ty=relax.TensorType(x.shape, x.dtype))
    return op.wrap_nested(call, name="all_reduce")


@lowers("all_gather")
def _all_gather(it, node, args):
    (x,) = args
    shards = int(node.attrs["shards"])
    stacked = op.reshape(x, [1] + list(x.shape))
    call = relax.call_dps_packed(it.collectives["all_gather"], [stacked._expr, _in_group()],
                                 out_ty=relax.TensorType([shards] + list(x.shape), x.dtype))
    gathered = op.wrap_nested(call, name="all_gather")  # [shards, ..., C]
    rank = len(x.shape)
    moved = op.permute_dims(gathered, list(range(1, rank)) + [0, rank])  # [..., shards, C]
    return op.reshape(moved, list(x.shape[:-1]) + [shards * x.shape[-1]])


@lowers("vocab_shard")
def _vocab_shard(it, node, args):
    ids, start = args
    rows, dtype = int(node.attrs["rows"]), node.attrs["dtype"]

    def compute(ids_t: te.Tensor, start_t: te.Tensor):
        def local(*index):
            shifted = ids_t[index] - start_t[0]
            return tirx.max(tirx.min(shifted, rows - 1), 0)

        def mask(*index):
            shifted = ids_t[index[:-1]] - start_t[0]
            inside = tirx.all(shifted >= 0, shifted < rows)
            return tirx.if_then_else(inside, tirx.const(1, dtype), tirx.const(0, dtype))

        return (te.compute(ids_t.shape, local, name="vocab_local"),
                te.compute(list(ids_t.shape) + [1], mask, name="vocab_mask"))

    return list(op.tensor_expr_op(compute, "vocab_shard", [ids, start]))
