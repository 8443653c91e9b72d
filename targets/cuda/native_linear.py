"""cuda lowering of `linear` with fp16 weights (q0f16) at decode onto ember's kernels (kernels/linear.cuh).

Two entry points take it, as native_gemv.py and native_lowbatch.py do for quant_linear:
- decode1 (leading dims all static, product 1): `ember::linear::gemv`, a streaming GEMV with x in shared memory
  (K up to ~24k for the 48 KB of static shared memory);
- the batched `decode` (one symbolic batch dim and 1s, in a function without prefill's token-count dims):
  `ember::linear::mma`, one pass over the weights for up to 16 * CH rows on mma.sync tensor cores, b a kernel
  argument.
Both need fp16 x and weight, K a multiple of 8 (16-byte loads) and a bias (if any) in fp16 or fp32. Everything
else (prefill, fp32, other weight dtypes) returns None: the generic lowering (targets/lower.py, dlight) keeps it.
EMBER_CUDA_LINEAR=0 turns both off (as does EMBER_CUDA_GEMV=0, the switch of all of ember's GEMV-like kernels).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ..extern_op import extern
from .extern_kernel import ATTRS, FLOAT_BIAS, HALF_BIAS, NO_BIAS, bias_code, launch  # noqa: F401
from .native_gemv import is_decode1
from .native_lowbatch import batch_dim, in_prefill

ENV = "EMBER_CUDA_LINEAR"
GEMV_ENV = "EMBER_CUDA_GEMV"
SHARED_LIMIT = 48 * 1024


@dataclass(frozen=True)
class GemvConfig:
    warps: int = 4  # warps per block
    rows: int = 2  # rows per warp
    depth: int = 4  # warp steps of 16-byte loads in flight per lane

    @property
    def threads(self) -> int:
        return 32 * self.warps

    def blocks(self, rows: int) -> int:
        return -(-rows // (self.warps * self.rows))

    def shared_bytes(self, cols: int) -> int:
        return 16 * 32 * -(-(cols // 8) // 32)  # x padded to whole warp steps


@dataclass(frozen=True)
class MmaConfig:
    warps: int = 8  # warps per block, splitting K
    tiles: int = 4  # 8-row n-tiles per block
    chunks: int = 1  # 16-row batch chunks per pass over the weights
    depth: int = 4  # k-tiles (32 k) of weight and x loads in flight per lane

    @property
    def threads(self) -> int:
        return 32 * self.warps

    def blocks(self, rows: int) -> int:
        return -(-rows // (8 * self.tiles))

    def shared_bytes(self) -> int:
        return 4 * self.warps * self.chunks * self.tiles * 4 * 32 if self.warps > 1 else 4


def choose_gemv(rows: int, cols: int) -> GemvConfig:
    """Batch-1 launch shape, from tools/linear_bench.py's sweep on an H200 (docs/measurements/2026-12-02-h200-f16-*):
    8 warps of 2 rows with 4 steps in flight was the fastest or within 1 % of it on every llama3-8b layer."""
    return GemvConfig(8, 2, 4)


def choose_mma(rows: int, cols: int) -> MmaConfig:
    """Batched launch shape, from the same sweep: 8 warps over K, 2 batch chunks (32 rows) per pass over the
    weights, 2 k-tiles in flight; 4 n-tiles a block, 2 for layers of <= 4096 rows (o, down: twice the blocks).
    Within ~5 % of the best config at batch 1..32 on every layer, at 64 within ~25 % (the LM head; 4 chunks a
    pass would need more than 48 KB for the reduction)."""
    return MmaConfig(8, 2 if rows <= 4096 else 4, 2, 2)


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0" and os.environ.get(GEMV_ENV, "1") != "0"


def gemv_name(rows: int, cols: int, bias: int, cfg: GemvConfig) -> str:
    return f"ember::linear::gemv<{rows}, {cols}, {cfg.warps}, {cfg.rows}, {cfg.depth}, {bias}>"


def mma_name(rows: int, cols: int, bias: int, cfg: MmaConfig) -> str:
    return f"ember::linear::mma<{rows}, {cols}, {cfg.warps}, {cfg.tiles}, {cfg.chunks}, {cfg.depth}, {bias}>"


def _compute(name: str, rows: int, bias: int, blocks: int, threads: int, batched: bool):
    """te compute of y[..., rows] = x[..., cols] . W^T (+ bias) through one of linear.cuh's kernels."""

    def compute(xt: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])

        def body(ins, outs):
            x, weight = ins[0], ins[1]
            bias_buf = ins[2] if bias != NO_BIAS else x
            ptrs = [b.access_ptr("r") for b in (x, weight, bias_buf)] + [outs[0].access_ptr("w")]
            if batched:
                ptrs.insert(0, tirx.Cast("int32", math.prod(x.shape[:-1])))
            return launch(tirx.call_extern("int32", name, *ptrs), blocks, threads)

        return extern(lead + [rows], [xt, *tensors], body, dtype="float16", name="ember_linear")

    return compute


def _operands(args: list) -> tuple[int, int, int] | None:
    """(rows, cols, bias code) of an fp16 linear the kernels can take, else None."""
    x, weight = args[0], args[1]
    if x.dtype != "float16" or weight.dtype != "float16" or len(weight.shape) != 2:
        return None
    rows, cols = (int(d.value) if isinstance(d, tirx.IntImm) else d for d in weight.shape)
    if not isinstance(rows, int) or not isinstance(cols, int) or cols % 8:
        return None
    bias = bias_code(list(args[2:]))
    return None if bias is None else (rows, cols, bias)


def plan(it: Any, node: Any, args: list, gemv: GemvConfig | None = None,
         mma: MmaConfig | None = None) -> tuple[str, tuple[int, int, int], GemvConfig | MmaConfig] | None:
    """("gemv" or "mma", (rows, cols, bias code), launch config) if a kernel takes this node, else None."""
    operands = _operands(args)
    if operands is None:
        return None
    rows, cols, _ = operands
    lead = list(args[0].shape[:-1])
    if is_decode1(lead):
        cfg = gemv or choose_gemv(rows, cols)
        return ("gemv", operands, cfg) if cfg.shared_bytes(cols) <= SHARED_LIMIT else None
    batch = batch_dim(lead)
    if batch is None or in_prefill(it, batch):
        return None
    cfg = mma or choose_mma(rows, cols)
    return ("mma", operands, cfg) if cfg.shared_bytes() <= SHARED_LIMIT else None


def lower_linear(it: Any, node: Any, args: list, gemv: GemvConfig | None = None,
                 mma: MmaConfig | None = None) -> Any:
    planned = plan(it, node, args, gemv, mma)
    if planned is None:
        return None
    kind, (rows, cols, bias), cfg = planned
    if kind == "gemv":
        compute = _compute(gemv_name(rows, cols, bias, cfg), rows, bias, cfg.blocks(rows), cfg.threads, False)
    else:
        compute = _compute(mma_name(rows, cols, bias, cfg), rows, bias, cfg.blocks(rows), cfg.threads, True)
    return op.tensor_expr_op(compute, f"f16_{kind}", list(args), attrs=ATTRS)


LOWERINGS = {"linear": lower_linear}
