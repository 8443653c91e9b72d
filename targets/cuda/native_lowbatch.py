"""cuda lowering of `quant_linear` in the batched `decode` function onto ember's tensor-core GEMM (kernels/lowbatch.cuh).

The override takes a layer only where that kernel applies: fp16 activations whose leading dims are one symbolic
batch dim and 1s (the `decode` entry point: x is (batch, 1, K)), in a function that has none of the prefill entry
point's token-count dims (prefill keeps dlight's tensor-core Matmul; a static decode1 is native_gemv's), a scheme
whose 16-byte lane loads lie inside one group (32 codes of 4-bit, 16 of 8-bit) with K a multiple of that, and a
bias (if any) in fp16 or fp32. Everything else returns None: the generic lowering keeps it.

The lowered op is an opaque PrimFunc whose body binds blockIdx.x / threadIdx.x and calls
`ember::lowbatch::run<...>(b, ...)`; the grid depends only on N, the batch b is a kernel argument (the kernel loops
over chunks of 16 rows). device_code.py prepends the kernel source to TVM's generated CUDA.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ..extern_op import extern
from ...ir.ops_quant import QuantFormat
from .extern_kernel import ATTRS, FLOAT_BIAS, HALF_BIAS, NO_BIAS, bias_code, launch, quant_pointers  # noqa: F401

ENV = "EMBER_CUDA_LOWBATCH"  # "0" turns the override off (dlight's kernels for the batched decode, for A/B runs)
GEMV_ENV = "EMBER_CUDA_GEMV"  # native_gemv's switch: "0" turns this one off too (all stock)
Q4, Q4_MIN, Q8 = 0, 1, 2  # lowbatch.cuh's Scheme
VALUES_PER_LOAD = {Q4: 32, Q4_MIN: 32, Q8: 16}
SHARED_LIMIT = 48 * 1024
PREFILL_FUNCTION = "prefill"  # targets/lower.py's entry point that takes a whole prompt


@dataclass(frozen=True)
class LowBatchConfig:
    warps: int = 8  # warps per block, splitting K
    tiles: int = 4  # 8-row n-tiles per block (one x fragment serves them all)
    chunks: int = 1  # 16-row batch chunks accumulated per pass over the weights
    depth: int = 2  # k-tiles of weight loads in flight per lane
    async_x: int = 0  # 1: x through a per-lane cp.async shared-memory ring, issued with the weight loads

    @property
    def threads(self) -> int:
        return 32 * self.warps

    def blocks(self, rows: int) -> int:
        return -(-rows // (8 * self.tiles))

    def shared_bytes(self, code: int = Q4) -> int:
        red = 4 * self.warps * self.chunks * self.tiles * 4 * 32 if self.warps > 1 else 4
        x_copies = self.chunks * 2 * (4 if code != Q8 else 2)  # 16-byte x copies per lane and k-tile
        return red + (16 * self.warps * self.depth * x_copies * 32 if self.async_x else 16)


def scheme_code(fmt: QuantFormat, cols: int) -> int | None:
    """lowbatch.cuh's Scheme for this format, or None where its lane loads do not fit it."""
    if fmt.bits not in (4, 8) or fmt.super_block:
        return None
    code = Q8 if fmt.bits == 8 else (Q4_MIN if fmt.has_min else Q4)
    values = VALUES_PER_LOAD[code]
    if fmt.group_size % values or cols % values:
        return None
    return code


def choose_config(code: int, rows: int, cols: int) -> LowBatchConfig:
    """Launch shape for one layer (tools/lowbatch_bench.py sweeps the alternatives)."""
    return LowBatchConfig(8, 4, 1, 2)


def kernel_name(code: int, rows: int, cols: int, group: int, bias: int, cfg: LowBatchConfig) -> str:
    args = [code, rows, cols, group, cfg.warps, cfg.tiles, cfg.chunks, cfg.depth, cfg.async_x, bias]
    return f"ember::lowbatch::run<{', '.join(str(a) for a in args)}>"


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0" and os.environ.get(GEMV_ENV, "1") != "0"


def _static(d: Any) -> int | None:
    if isinstance(d, tirx.IntImm):
        return int(d.value)
    return d if isinstance(d, int) else None


def batch_dim(shape: list[Any]) -> Any | None:
    """The one symbolic dim of leading dims that are otherwise 1s, or None."""
    symbolic = [d for d in shape if _static(d) is None]
    if len(symbolic) != 1 or math.prod(_static(d) for d in shape if _static(d) is not None) != 1:
        return None
    return symbolic[0]


def _prefill_dims(it: Any) -> set[str]:
    module = getattr(it, "module", None)
    prefill = module.functions.get(PREFILL_FUNCTION) if module is not None else None
    if prefill is None:
        return set()
    return {d for v in prefill.inputs for d in v.type.shape if isinstance(d, str)}


def in_prefill(it: Any, batch: Any) -> bool:
    """The function being interpreted uses a prefill token-count dim, or the batch dim is one."""
    dims = _prefill_dims(it)
    name = getattr(batch, "name", None)
    return bool(dims & set(getattr(it, "symbols", {}) or {})) or name in dims


def lowbatch_compute(code: int, rows: int, cols: int, group: int, bias: int, cfg: LowBatchConfig):
    """te compute of y[b, 1, rows] = x[b, 1, cols] . W^T (+ bias) through ember::lowbatch::run."""
    name = kernel_name(code, rows, cols, group, bias, cfg)
    blocks, threads = cfg.blocks(rows), cfg.threads

    def compute(xt: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])

        def body(ins, outs):
            x = ins[0]
            count = math.prod(x.shape[:-1]) if len(x.shape) > 1 else 1
            ptrs = quant_pointers(ins, outs, bias)
            return launch(tirx.call_extern("int32", name, tirx.Cast("int32", count), *ptrs), blocks, threads)

        return extern(lead + [rows], [xt, *tensors], body, dtype="float16", name="ember_lowbatch")

    return compute


def batched_decode_operands(it: Any, node: Any, args: list) -> tuple[QuantFormat, int, int, int] | None:
    """(format, rows, cols, bias code) of a quant_linear of the batched decode (fp16 x with one symbolic batch dim
    that is not a prefill dim, a bias the kernels take), else None: what lowbatch.cuh and klowbatch.cuh share."""
    fmt = QuantFormat.from_attrs(node.attrs)
    x = args[0]
    if x.dtype != "float16":
        return None
    batch = batch_dim(list(x.shape[:-1]))
    if batch is None or in_prefill(it, batch):
        return None
    bias = bias_code(list(args[1 + fmt.num_pieces:]))
    if bias is None:
        return None
    return fmt, int(args[1].shape[0]), int(node.attrs["in_features"]), bias


def plan(it: Any, node: Any, args: list, config: LowBatchConfig | None = None) -> tuple[
        tuple[int, int, int, int, int], LowBatchConfig] | None:
    """((scheme code, rows, cols, group, bias code), launch config) if the kernel takes this node, else None."""
    operands = batched_decode_operands(it, node, args)
    if operands is None:
        return None
    fmt, rows, cols, bias = operands
    code = scheme_code(fmt, cols)
    if code is None:
        return None
    cfg = config or choose_config(code, rows, cols)
    if cfg.shared_bytes(code) > SHARED_LIMIT:
        return None
    return (code, rows, cols, fmt.group_size, bias), cfg


def lower_quant_linear(it: Any, node: Any, args: list, config: LowBatchConfig | None = None) -> Any:
    planned = plan(it, node, args, config)
    if planned is None:
        return None
    (code, rows, cols, group, bias), cfg = planned
    compute = lowbatch_compute(code, rows, cols, group, bias, cfg)
    return op.tensor_expr_op(compute, f"{node.attrs['scheme']}_lowbatch", list(args), attrs=ATTRS)


LOWERINGS = {"quant_linear": lower_quant_linear}


def merged(table: dict[str, Any]) -> dict[str, Any]:
    """`table` (op -> lowering) with this module's lowerings tried after any that is already there for an op."""
    out = dict(table)
    for name, lowering in LOWERINGS.items():
        first = out.get(name)
        if first is None:
            out[name] = lowering
            continue

        def chained(it: Any, node: Any, args: list, first=first, second=lowering) -> Any:
            result = first(it, node, args)
            return result if result is not None else second(it, node, args)

        out[name] = chained
    return out
