"""cuda lowering of the prefill's `quant_linear` (4- and 8-bit weights) onto ember's tensor-core GEMMs that
dequantize in their mainloop: packed weights go to shared memory as they are stored and are dequantized there
(one fp16 rounding per weight, as in every other kernel). No weight tensor is ever dequantized in memory.

Two kernels:
- sm_90-only builds: kernels/prefill_qgemm_sm90.cuh, wgmma with both operands in shared memory (each k-tile of
  weights dequantized once per block into a swizzled fp16 tile while the wgmma of the tile before runs), compiled
  by nvcc at `ember compile` into an object per (scheme, group) (cached like prefill_gemm.py's) and called through
  `call_dps_packed("ember_prefill_qgemm_<scheme>_g<group>")`; it picks its tile per call from m and N. For 4-bit
  weights the object also holds kernels/prefill_qgemm_sm90_rs.cuh (the weights converted straight into wgmma's
  register operand, no fp16 tile and no barrier in between: 1.15x at 2048 tokens), among whose tiles and the
  shared-memory kernel's the wave model chooses. A bias is a Relax add after it.
- EMBER_CUDA_QGEMM=mma (any arch from sm_80; A/B runs): kernels/prefill_qgemm.cuh, mma.sync with the weights
  dequantized into registers, a device function in TVM's own kernel source (call_extern, like native_lowbatch.py);
  two block tiles chosen at run time from the token count m: the large one once its grid fills the GPU, the small
  one (four times the blocks) below that (a 128-token prompt: 32 large blocks for N = 4096 on 132 SMs). Bias in
  its epilogue. Not the default: measured on the H200 it is slower than dlight's schedule from 512 tokens on
  (mma_forced()), so other builds (sm_80, or several archs) keep dlight's until the object serves them too.

The override takes a layer in a prefill function (its token count is a prefill dim, as in prefill_gemm.py) with
fp16 x, a scheme of lowbatch.cuh's (Q4 s*(q-8), Q4_MIN s*q+m, Q8 s*q) whose groups hold whole k-tiles, K and N
multiples of the tiles, and a bias (if any) in fp16 or fp32. Everything else returns None (dlight's Matmul
schedule of the generic lowering keeps it). EMBER_CUDA_QGEMM=0 (or EMBER_CUDA_GEMV=0, all stock) turns it off.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend.nn import op

from ..extern_op import extern
from ...ir.ops_quant import QuantFormat
from .device_code import inlined
from .extern_kernel import ATTRS, NO_BIAS, bias_code, launch, quant_pointers  # noqa: F401  (NO_BIAS: plan()'s callers)
from .native_gemv import is_decode1
from .native_lowbatch import GEMV_ENV, Q4, Q4_MIN, Q8, _static, in_prefill
from .nvcc import sm_number

ENV = "EMBER_CUDA_QGEMM"  # "0": dlight's schedule for the prefill's quantized linears (A/B runs); GEMV_ENV too
TILE_K = 32
WGMMA_TILE_K, WGMMA_TILE_N = 64, 64  # prefill_qgemm_sm90.cuh's k-tile and smallest block tile along N
SM90_SOURCE = "prefill_qgemm_sm90.cu"
TAGS = {Q4: "q4", Q4_MIN: "q4min", Q8: "q8"}
SHARED_LIMIT = 48 * 1024
FILL_BLOCKS = 120  # below this many large blocks the small tile runs (the H100/H200 have 132 SMs)


@dataclass(frozen=True)
class TileConfig:
    bm: int  # tokens per block
    bn: int  # weight rows per block
    wm: int  # warps along m
    wn: int  # warps along n
    stages: int  # k-tiles in the cp.async ring

    @property
    def threads(self) -> int:
        return 32 * self.wm * self.wn

    def shared_bytes(self, code: int) -> int:
        return self.stages * (self.bm * TILE_K * 2 + self.bn * (32 if code == Q8 else 16))


LARGE = TileConfig(128, 128, 2, 4, 4)
SMALL = TileConfig(64, 64, 2, 2, 4)


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0" and os.environ.get(GEMV_ENV, "1") != "0"


def wgmma_enabled(archs: list[str]) -> bool:
    """The sm_90a object (wgmma) serves builds whose every arch is sm_90."""
    return os.environ.get(ENV, "1") != "mma" and bool(archs) and all(sm_number(a) == 90 for a in archs)


def mma_forced() -> bool:
    """The mma.sync kernel only where asked for: on the H200 it beats dlight's schedule at short prompts (TTFT 128
    17.8 vs 22.9 ms) but not from 512 tokens on (pp512 11.7k vs 12.7k tok/s; docs/measurements/
    2026-12-03-h200-prefill-qgemm), so builds without the wgmma object keep dlight's by default."""
    return os.environ.get(ENV, "1") == "mma"


def function_name(code: int, group: int) -> str:
    return f"ember_prefill_qgemm_{TAGS[code]}_g{group}"


def scheme_code(fmt: QuantFormat, cols: int) -> int | None:
    if fmt.bits not in (4, 8) or fmt.super_block or fmt.group_size % TILE_K or cols % TILE_K:
        return None
    return Q8 if fmt.bits == 8 else (Q4_MIN if fmt.has_min else Q4)


def kernel_name(code: int, rows: int, cols: int, group: int, bias: int, cfg: TileConfig) -> str:
    args = [code, rows, cols, group, bias, cfg.bm, cfg.bn, cfg.wm, cfg.wn, cfg.stages]
    return f"ember::qgemm::run<{', '.join(str(a) for a in args)}>"


def configs_for(code: int, rows: int) -> list[TileConfig]:
    """The tiles this layer can use, large first."""
    return [c for c in (LARGE, SMALL) if rows % c.bn == 0 and c.shared_bytes(code) <= SHARED_LIMIT]


def small_below(rows: int, cfgs: list[TileConfig]) -> int:
    """The token count from which the large tile runs (when both fit)."""
    if len(cfgs) < 2:
        return 0
    large = cfgs[0]
    return large.bm * max(1, math.ceil(FILL_BLOCKS / (rows // large.bn)))


def plan(it: Any, node: Any, args: list) -> tuple[tuple[int, int, int, int, int], list[TileConfig]] | None:
    """((scheme code, rows, cols, group, bias code), tiles) if the kernel takes this node, else None."""
    fmt = QuantFormat.from_attrs(node.attrs)
    x = args[0]
    cols = int(node.attrs["in_features"])
    code = scheme_code(fmt, cols)
    if code is None or x.dtype != "float16":
        return None
    lead = list(x.shape[:-1])
    symbolic = [d for d in lead if _static(d) is None]
    if is_decode1(lead) or not symbolic or not any(in_prefill(it, d) for d in symbolic):
        return None
    bias = bias_code(list(args[1 + fmt.num_pieces:]))
    if bias is None:
        return None
    rows = int(args[1].shape[0])
    cfgs = configs_for(code, rows)
    if not cfgs:
        return None
    return (code, rows, cols, fmt.group_size, bias), cfgs


def qgemm_compute(code: int, rows: int, cols: int, group: int, bias: int, cfgs: list[TileConfig]):
    """te compute of y[..., rows] = x[..., cols] . W^T (+ bias) through ember::qgemm::run."""
    cut = small_below(rows, cfgs)

    def compute(xt: te.Tensor, *tensors: te.Tensor) -> te.Tensor:
        lead = list(xt.shape[:-1])

        def body(ins, outs):
            count = tirx.Cast("int32", math.prod(ins[0].shape[:-1]))
            ptrs = quant_pointers(ins, outs, bias)

            def run(cfg: TileConfig) -> tirx.Stmt:
                call = tirx.call_extern("int32", kernel_name(code, rows, cols, group, bias, cfg), count, *ptrs)
                blocks = tirx.floordiv(count + (cfg.bm - 1), cfg.bm) * (rows // cfg.bn)
                return launch(call, blocks, cfg.threads)

            if len(cfgs) == 1:
                return run(cfgs[0])
            return tirx.IfThenElse(count < cut, run(cfgs[1]), run(cfgs[0]))

        return extern(lead + [rows], [xt, *tensors], body, dtype="float16", name="ember_qgemm")

    return compute


def lower_mma(node: Any, args: list, planned: tuple) -> Any:
    (code, rows, cols, group, bias), cfgs = planned
    compute = qgemm_compute(code, rows, cols, group, bias, cfgs)
    return op.tensor_expr_op(compute, f"{node.attrs['scheme']}_prefill_gemm", list(args), attrs=ATTRS)


def lower_quant_linear(it: Any, node: Any, args: list) -> Any:
    """The mma.sync kernel (any arch from sm_80), whatever the switches; PrefillQGemm picks per build."""
    planned = plan(it, node, args)
    return None if planned is None else lower_mma(node, args, planned)


class PrefillQGemm:
    """The lowering for one build (which kernel its archs take) and, after tracing, the objects it needs."""

    def __init__(self, archs: list[str]) -> None:
        self.archs = archs
        self.wgmma = wgmma_enabled(archs)
        self.used: set[tuple[int, int]] = set()  # (scheme code, group) of the sm_90a calls

    def lower_quant_linear(self, it: Any, node: Any, args: list) -> Any:
        planned = plan(it, node, args)
        if planned is None:
            return None
        (code, rows, cols, group, bias), _ = planned
        if not self.wgmma or rows % WGMMA_TILE_N or cols % WGMMA_TILE_K:  # groups: whole 32s, as plan() asks
            return lower_mma(node, args, planned) if mma_forced() else None
        from tvm import relax

        fmt = QuantFormat.from_attrs(node.attrs)
        x, pieces = args[0], list(args[1:1 + fmt.num_pieces])
        self.used.add((code, group))
        out = relax.TensorType([*x.shape[:-1], rows], "float16")
        y = op.wrap_nested(relax.call_dps_packed(function_name(code, group), [x._expr, *(p._expr for p in pieces)],
                                                 out_ty=out), name="prefill_qgemm")
        extra = list(args[1 + fmt.num_pieces:])
        if extra:
            y = y + (extra[0] if str(extra[0].dtype) == "float16" else op.astype(extra[0], "float16"))
        return y

    def start_objects(self) -> Any:
        """Starts compiling (or finds in the cache) the sm_90a object of every (scheme, group) used."""
        if not self.used:
            return None
        from .prefill_gemm import ObjectBuild

        return ObjectBuild([QObjectSpec(code, group) for code, group in sorted(self.used)])


@dataclass(frozen=True)
class QObjectSpec:
    code: int
    group: int

    @property
    def stem(self) -> str:
        return f"prefill_qgemm-{TAGS[self.code]}_g{self.group}"

    def source_text(self) -> str:
        return inlined(SM90_SOURCE, set())

    def command(self, nvcc: str, source: Path, output: Path) -> list[str]:
        from .prefill_gemm import tvm_ffi_include

        defines = [f"-DEMBER_QGEMM_SCHEME={self.code}", f"-DEMBER_QGEMM_GROUP={self.group}",
                   f"-DEMBER_QGEMM_NAME={function_name(self.code, self.group)}"]
        return [nvcc, "-std=c++17", "-O3", "-DNDEBUG", "-Xcompiler", "-fPIC", "-c", *defines,
                "-gencode", "arch=compute_90a,code=sm_90a", f"-I{tvm_ffi_include()}", "-o", str(output), str(source)]

    def key(self, nvcc: str) -> str:
        from .prefill_gemm import object_key

        return object_key(self, nvcc)


LOWERINGS = {"quant_linear": lower_quant_linear}

__all__ = ["ENV", "LARGE", "LOWERINGS", "PrefillQGemm", "QObjectSpec", "SMALL", "TileConfig", "configs_for",
           "enabled", "function_name", "kernel_name", "mma_forced", "plan", "small_below", "wgmma_enabled"]
