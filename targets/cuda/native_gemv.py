"""cuda lowering of `quant_linear` at decode batch 1 onto ember's hand-written GEMV (kernels/gemv.cuh).

The override takes a layer only where that kernel applies: fp16 activations whose leading dims are all static
and multiply to 1 (the `decode1` entry point), a scheme of `SCHEMES` (q4f16, q4f16_1, q4f16g128, q8f16: the
4-bit layers and the 8-bit LM head) with whole 16-byte lane loads per group (`Layout.kValues` in gemv.cuh: 32
codes of 4-bit, 16 of 8-bit) and K a multiple of that, x fitting the kernel's shared-memory buffer (K up to
~23k), and a bias (if any) in fp16 or fp32. Everything else returns None: the generic lowering (lower_quant.py,
scheduled by dlight) keeps it.

The lowered op is an opaque PrimFunc (FuseOps and dlight leave it alone) whose body binds blockIdx.x and
threadIdx.x and calls `ember::gemv::run<...>()`, a `__device__` template instantiated for the layer's shape;
device_code.py prepends the kernel source to TVM's generated CUDA before nvcc compiles it.
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

ENV = "EMBER_CUDA_GEMV"  # "0" turns the override off (the stock dlight GEMV everywhere, for A/B runs)
SWIGLU_ENV = "EMBER_CUDA_GEMV_SWIGLU"  # "0": the down projection reads the swiglu kernel's output (A/B runs)
PLAIN, SWIGLU = 0, 1  # gemv.cuh's Act: what the kernel stages as x
Q4, Q4_MIN, Q8 = 0, 1, 2  # gemv.cuh's Scheme
VALUES_PER_LOAD = {Q4: 32, Q4_MIN: 32, Q8: 16}
SHARED_LIMIT = 48 * 1024  # static shared memory per block, every arch
# The kernel's schemes that the override takes (all of them: each beat dlight's GEMV on every shape measured).
SCHEMES = (Q4, Q4_MIN, Q8)


@dataclass(frozen=True)
class GemvConfig:
    warps: int = 4  # warps per block
    rows: int = 2  # rows per warp (one x fragment serves them all)
    depth: int = 4  # warp steps of weight loads in flight per lane
    per: int = 2  # weight words summed in fp16x2 before the fp32 sum (8 4-bit codes a word)
    async_copy: int = 0  # 1: weights through a cp.async shared-memory ring instead of registers

    @property
    def threads(self) -> int:
        return 32 * self.warps

    def blocks(self, rows: int) -> int:
        return -(-rows // (self.warps * self.rows))


def scheme_code(fmt: QuantFormat, cols: int) -> int | None:
    """gemv.cuh's Scheme for this format, or None where the kernel's lane loads do not fit it."""
    if fmt.bits not in (4, 8) or fmt.super_block:  # 5-/6-bit and K-quants: native_kgemv.py
        return None
    code = Q8 if fmt.bits == 8 else (Q4_MIN if fmt.has_min else Q4)
    values = VALUES_PER_LOAD[code]
    if fmt.group_size % values or cols % values:
        return None
    return code


def shared_bytes(code: int, cols: int, cfg: GemvConfig) -> int:
    """gemv.cuh's static shared memory: x (padded to whole steps), sums of x (Q4_MIN), the cp.async ring."""
    values = VALUES_PER_LOAD[code]
    steps = -(-(cols // values) // 32)
    padded = steps * 32 * values
    ring = 16 * cfg.warps * cfg.depth * cfg.rows * 32 if cfg.async_copy else 0
    return 2 * padded + (4 * steps * 32 if code == Q4_MIN else 0) + ring


def choose_config(code: int, rows: int, cols: int) -> GemvConfig:
    """Launch shape for one layer, from the sweep of tools/gemv_bench.py on an H200 (docs/measurements): 4 warps
    of 2 rows with 4 steps of 16-byte loads in flight, in registers; 8 warps a block for long rows (fewer blocks
    restage x) and for q4f16_1's tall layers; q4f16_1 with 2 steps in flight otherwise."""
    if code == Q4_MIN:
        return GemvConfig(8, 2, 4, 2, 0) if rows >= 16384 else GemvConfig(4, 2, 2, 2, 0)
    if cols > 8192:
        return GemvConfig(8, 2, 4, 2, 0)
    return GemvConfig(4, 2, 4, 2, 0)


def kernel_name(code: int, rows: int, cols: int, group: int, bias: int, cfg: GemvConfig, act: int = PLAIN) -> str:
    args = [code, rows, cols, group, cfg.warps, cfg.rows, cfg.depth, cfg.per, cfg.async_copy, bias]
    args += [act] if act != PLAIN else []
    return f"ember::gemv::run<{', '.join(str(a) for a in args)}>"


def is_decode1(shape: list[Any]) -> bool:
    """Leading dims all static and of product 1."""
    dims = []
    for d in shape:
        if isinstance(d, tirx.IntImm):
            d = int(d.value)
        if not isinstance(d, int):
            return False
        dims.append(d)
    return math.prod(dims) == 1


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def gemv_compute(code: int, rows: int, cols: int, group: int, bias: int, cfg: GemvConfig, act: int = PLAIN):
    """te compute of y[..., rows] = x[..., cols] . W^T (+ bias) through ember::gemv::run; with act SWIGLU the input
    is [gate | up] (2 * cols wide) and x = silu(gate) * up."""
    name = kernel_name(code, rows, cols, group, bias, cfg, act)
    blocks, threads = cfg.blocks(rows), cfg.threads

    def compute(xt: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])

        def body(ins, outs):
            return launch(tirx.call_extern("int32", name, *quant_pointers(ins, outs, bias)), blocks, threads)

        return extern(lead + [rows], [xt, *tensors], body, dtype="float16", name="ember_gemv")

    return compute


def swiglu_input(it: Any, node: Any) -> Any | None:
    """The lowered [gate | up] tensor if this linear's input is a swiglu's output (the down projection), else None.
    The swiglu kernel itself is then left without readers and dropped by Relax's dead-code elimination."""
    inputs = getattr(node, "inputs", None)  # (tools/gemv_bench.py's standalone nodes have none)
    producer = inputs[0].producer if inputs else None
    if producer is None or producer.op != "swiglu" or os.environ.get(SWIGLU_ENV, "1") == "0":
        return None
    return it.get(producer.inputs[0])


def plan(node: Any, args: list, config: GemvConfig | None = None) -> tuple[tuple[int, int, int, int, int],
                                                                          GemvConfig] | None:
    """((scheme code, rows, cols, group, bias code), launch config) if the kernel takes this node, else None."""
    fmt = QuantFormat.from_attrs(node.attrs)
    x = args[0]
    cols = int(node.attrs["in_features"])
    code = scheme_code(fmt, cols)
    if code not in SCHEMES or x.dtype != "float16" or not is_decode1(list(x.shape[:-1])):
        return None
    bias = bias_code(list(args[1 + fmt.num_pieces:]))
    if bias is None:
        return None
    rows = int(args[1].shape[0])
    cfg = config or choose_config(code, rows, cols)
    if shared_bytes(code, cols, cfg) > SHARED_LIMIT:
        return None
    return (code, rows, cols, fmt.group_size, bias), cfg


def lower_quant_linear(it: Any, node: Any, args: list, config: GemvConfig | None = None) -> Any:
    planned = plan(node, args, config)
    if planned is None:
        return None
    (code, rows, cols, group, bias), cfg = planned
    gate_up = swiglu_input(it, node)
    act = SWIGLU if gate_up is not None and gate_up.dtype == "float16" else PLAIN
    inputs = [gate_up, *args[1:]] if act == SWIGLU else list(args)
    compute = gemv_compute(code, rows, cols, group, bias, cfg, act)
    return op.tensor_expr_op(compute, f"{node.attrs['scheme']}_gemv", inputs, attrs=ATTRS)


LOWERINGS = {"quant_linear": lower_quant_linear}
