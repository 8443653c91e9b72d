"""cuda lowering of `quant_linear` at decode batch 1 for the GGUF formats kept native (kernels/kgemv.cuh).

Takes q5f16 (Q5_0), q5f16_1 (Q5_1), q4_k, q5_k and q6_k layers of the `decode1` entry point (fp16 activations,
static leading dims of product 1, K a multiple of 32 / 256, bias fp16 or fp32 or none): an opaque PrimFunc whose
body calls `ember::kgemv::run<format, N, K, warps, rows, depth, bias[, act]>` (device_code.py prepends the
source; launch shape per layer from `choose_config`, swept by tools/kgemv_bench.py). A down projection fed by a
swiglu stages silu(gate) * up itself (act SWIGLU, as native_gemv.py; EMBER_CUDA_GEMV_SWIGLU=0 off). Everything
else returns None (native_klowbatch.py for the batched decode; otherwise the generic lowering, lower_quant.py,
which dlight schedules with the dequantization inlined into its loads). EMBER_CUDA_GEMV=0 turns it off with the
other GEMVs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ..cpu.native_linear import Q2_K, Q3_K, WIDE
from ..extern_op import extern
from ...ir.ops_quant import QuantFormat
from .extern_kernel import ATTRS, NO_BIAS, bias_code, launch
from .native_gemv import PLAIN, SHARED_LIMIT, SWIGLU, is_decode1, swiglu_input

PIECES = ("qweight", "qhigh", "scales", "mins", "super", "super_mins")
MIN_CODES = (6, 7, 8)  # Q5_1, Q4_K, Q5_K: W = s q + m (the kernel keeps sums of x per group)


@dataclass(frozen=True)
class KGemvConfig:
    warps: int = 4  # warps per block
    rows: int = 2  # rows per warp (one x fragment serves them all)
    depth: int = 4  # warp steps of loads (every stream) in flight per lane

    @property
    def threads(self) -> int:
        return 32 * self.warps

    def blocks(self, rows: int) -> int:
        return -(-rows // (self.warps * self.rows))


def shared_bytes(code: int, cols: int) -> int:
    """kgemv.cuh's static shared memory: x padded to whole steps of 1024, and fp32 sums of x per group (mins)."""
    steps = -(-(cols // 32) // 32)
    return 2 * steps * 1024 + (4 * steps * 32 if code in MIN_CODES else 0)


def choose_config(code: int, rows: int, cols: int) -> KGemvConfig:
    """Launch shape for one layer: gemv.cuh's measured q4f16 choice (4 warps of 2 rows, 4 steps in flight; 8 warps
    for long rows, where fewer blocks restage x) until tools/kgemv_bench.py's sweep says otherwise."""
    return KGemvConfig(8, 2, 4) if cols > 8192 else KGemvConfig(4, 2, 4)


def format_code(fmt: QuantFormat, cols: int) -> int | None:
    """kgemv.cuh's Format (= native/linear.c's codes), or None where the kernel does not apply (Q2_K and Q3_K: the
    generic dequantize lowering at every batch size)."""
    code = WIDE.get((fmt.bits, fmt.has_min, fmt.super_block))
    if code is None or code in (Q2_K, Q3_K):
        return None
    if cols % max(fmt.super_block, 32) or fmt.group_size != (16 if fmt.bits == 6 else 32):
        return None
    return code


def kernel_name(code: int, rows: int, cols: int, bias: int, cfg: KGemvConfig, act: int = PLAIN) -> str:
    args = [code, rows, cols, cfg.warps, cfg.rows, cfg.depth, bias] + ([act] if act != PLAIN else [])
    return f"ember::kgemv::run<{', '.join(str(a) for a in args)}>"


def kgemv_compute(fmt: QuantFormat, code: int, rows: int, cols: int, bias: int, cfg: KGemvConfig,
                  act: int = PLAIN):
    """te compute of y[..., rows] = x[..., cols] . W^T (+ bias) through ember::kgemv::run; with act SWIGLU the input
    is [gate | up] (2 * cols wide) and x = silu(gate) * up."""
    name = kernel_name(code, rows, cols, bias, cfg, act)
    blocks, threads = cfg.blocks(rows), cfg.threads

    def compute(xt: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])

        def body(ins, outs):
            x, pieces = ins[0], list(ins[1:])
            bias_buf = pieces.pop() if bias != NO_BIAS else x
            named = dict(zip(fmt.piece_names, pieces))
            ptrs = [named.get(k, named["qweight"]).access_ptr("r") for k in PIECES]
            args = [x.access_ptr("r"), *ptrs, bias_buf.access_ptr("r"), outs[0].access_ptr("w")]
            return launch(tirx.call_extern("int32", name, *args), blocks, threads)

        return extern(lead + [rows], [xt, *tensors], body, dtype="float16", name="ember_kgemv")

    return compute


def plan(node: Any, args: list, config: KGemvConfig | None = None) -> tuple[tuple[int, int, int, int],
                                                                           KGemvConfig] | None:
    """((format code, rows, cols, bias code), launch config) if the kernel takes this node, else None."""
    fmt = QuantFormat.from_attrs(node.attrs)
    x = args[0]
    cols = int(node.attrs["in_features"])
    code = format_code(fmt, cols)
    if code is None or x.dtype != "float16" or not is_decode1(list(x.shape[:-1])):
        return None
    bias = bias_code(list(args[1 + fmt.num_pieces:]))
    if bias is None or shared_bytes(code, cols) > SHARED_LIMIT:
        return None
    rows = int(args[1].shape[0])
    return (code, rows, cols, bias), config or choose_config(code, rows, cols)


def lower_quant_linear(it: Any, node: Any, args: list, config: KGemvConfig | None = None) -> Any:
    planned = plan(node, args, config)
    if planned is None:
        return None
    (code, rows, cols, bias), cfg = planned
    gate_up = swiglu_input(it, node)
    act = SWIGLU if gate_up is not None and gate_up.dtype == "float16" else PLAIN
    inputs = [gate_up, *args[1:]] if act == SWIGLU else list(args)
    compute = kgemv_compute(QuantFormat.from_attrs(node.attrs), code, rows, cols, bias, cfg, act)
    return op.tensor_expr_op(compute, f"{node.attrs['scheme']}_kgemv", inputs, attrs=ATTRS)
