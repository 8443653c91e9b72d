"""cuda lowering of `quant_linear` in the batched `decode` function for the GGUF formats kept native
(kernels/klowbatch.cuh: lowbatch.cuh's tensor-core GEMM over kgemv.cuh's planar streams).

Takes q5f16 (Q5_0), q5f16_1 (Q5_1), q4_k, q5_k and q6_k layers where native_lowbatch.py takes the 4-/8-bit ones:
fp16 activations whose leading dims are one symbolic batch dim and 1s (x is (batch, 1, K)), in a function with none
of the prefill's token-count dims, K whole groups (and super blocks), a bias (if any) in fp16 or fp32. The batch
is a kernel argument (any size: chunks of 16 rows, CH chunks per pass over the weights). Everything else returns
None: the generic lowering (dlight, dequantization inlined) keeps it. EMBER_CUDA_LOWBATCH=0 or EMBER_CUDA_GEMV=0
turn it off with native_lowbatch.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ..extern_op import extern
from ...ir.ops_quant import QuantFormat
from .extern_kernel import ATTRS, NO_BIAS, launch
from .native_kgemv import PIECES, format_code
from .native_lowbatch import SHARED_LIMIT, batched_decode_operands


@dataclass(frozen=True)
class KLowBatchConfig:
    warps: int = 8  # warps per block, splitting K
    tiles: int = 4  # 8-row n-tiles per block (one x fragment serves them all)
    chunks: int = 1  # 16-row batch chunks accumulated per pass over the weights
    depth: int = 2  # k-tiles of loads (every stream) in flight per lane

    @property
    def threads(self) -> int:
        return 32 * self.warps

    def blocks(self, rows: int) -> int:
        return -(-rows // (8 * self.tiles))

    def shared_bytes(self) -> int:
        return 4 * self.warps * self.chunks * self.tiles * 4 * 32 if self.warps > 1 else 4


def choose_config(code: int, rows: int, cols: int) -> KLowBatchConfig:
    """Launch shape for one layer: lowbatch.cuh's default until tools/kgemv_bench.py's sweep says otherwise."""
    return KLowBatchConfig(8, 4, 1, 2)


def kernel_name(code: int, rows: int, cols: int, bias: int, cfg: KLowBatchConfig) -> str:
    args = [code, rows, cols, cfg.warps, cfg.tiles, cfg.chunks, cfg.depth, bias]
    return f"ember::klowbatch::run<{', '.join(str(a) for a in args)}>"


def klowbatch_compute(fmt: QuantFormat, code: int, rows: int, cols: int, bias: int, cfg: KLowBatchConfig):
    """te compute of y[b, 1, rows] = x[b, 1, cols] . W^T (+ bias) through ember::klowbatch::run."""
    name = kernel_name(code, rows, cols, bias, cfg)
    blocks, threads = cfg.blocks(rows), cfg.threads

    def compute(xt: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])

        def body(ins, outs):
            x, pieces = ins[0], list(ins[1:])
            count = math.prod(x.shape[:-1]) if len(x.shape) > 1 else 1
            bias_buf = pieces.pop() if bias != NO_BIAS else x
            named = dict(zip(fmt.piece_names, pieces))
            ptrs = [named.get(k, named["qweight"]).access_ptr("r") for k in PIECES]
            args = [tirx.Cast("int32", count), x.access_ptr("r"), *ptrs, bias_buf.access_ptr("r"),
                    outs[0].access_ptr("w")]
            return launch(tirx.call_extern("int32", name, *args), blocks, threads)

        return extern(lead + [rows], [xt, *tensors], body, dtype="float16", name="ember_klowbatch")

    return compute


def plan(it: Any, node: Any, args: list, config: KLowBatchConfig | None = None) -> tuple[
        tuple[int, int, int, int], KLowBatchConfig] | None:
    """((format code, rows, cols, bias code), launch config) if the kernel takes this node, else None."""
    operands = batched_decode_operands(it, node, args)
    if operands is None:
        return None
    fmt, rows, cols, bias = operands
    code = format_code(fmt, cols)
    if code is None:
        return None
    cfg = config or choose_config(code, rows, cols)
    if cfg.shared_bytes() > SHARED_LIMIT:
        return None
    return (code, rows, cols, bias), cfg


def lower_quant_linear(it: Any, node: Any, args: list, config: KLowBatchConfig | None = None) -> Any:
    planned = plan(it, node, args, config)
    if planned is None:
        return None
    (code, rows, cols, bias), cfg = planned
    compute = klowbatch_compute(QuantFormat.from_attrs(node.attrs), code, rows, cols, bias, cfg)
    return op.tensor_expr_op(compute, f"{node.attrs['scheme']}_klowbatch", list(args), attrs=ATTRS)
