"""Relax/TIR pipeline and build entry point for cuda: the best-stock recipe.

tvm-baseline-llama3-8b.md §7: FuseTransposeMatmul before legalization, TVM's default cuda phases,
dlight rules chosen per PrimFunc (targets/gpu_schedule.py: GEMV first for decode kernels, Matmul first
for prefill kernels so they get WMMA), and TIR CSE disabled (it breaks the paged-KV `batch_tree_attn` kernel).

tvm is imported lazily: importing this module before `prepare_cuda_compile_process()` must not
import tvm, or the CUDA runtime would never load and kernels would ship as source.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..gpu_schedule import gpu_relax_pipeline
from ..tvmscript import preload_tensor_intrinsics
from . import CudaToolchainError
from .nvcc import multi_arch_compile, sm_number

if TYPE_CHECKING:
    import tvm
    from tvm.runtime import Executable
    from tvm.s_tir.dlight import ScheduleRule

log = logging.getLogger(__name__)

# dlight's default; also the per-block static limit on sm_80, so one scheduled source fits both archs.
MAX_SHARED_MEMORY_PER_BLOCK = 49152
PASS_CONFIG = {"tirx.disable_cse_tir": True}


def cuda_target(archs: Sequence[str]) -> tvm.target.Target:
    """Schedule for the highest arch; every arch compiles the same source (WMMA 16x16x16, 48 KB smem)."""
    import tvm

    if not archs:
        raise ValueError("cuda_target needs at least one arch")
    highest = max(archs, key=lambda a: (sm_number(a), a))
    return tvm.target.Target(
        {"kind": "cuda", "arch": highest, "max_shared_memory_per_block": MAX_SHARED_MEMORY_PER_BLOCK},
        host={"kind": "llvm"},
    )


def prefill_rules() -> list[ScheduleRule]:
    """dlight rules for kernels of prefill functions (many rows: tensor-core Matmul first)."""
    from tvm.s_tir import dlight as dl

    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def decode_rules() -> list[ScheduleRule]:
    """dlight rules for every other kernel (few rows: GEMV / LowBatchGEMV first)."""
    from tvm.s_tir import dlight as dl

    return [dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Matmul(), dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def cuda_relax_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's default cuda phases, with FuseTransposeMatmul first, per-function dlight rules and ember's decode
    attention kernel (attention.py) in place of TVM's."""
    from tvm.relax.backend.cuda import pipeline as tvm_cuda

    from .attention import replace_decode_attention  # TVM's decode attention -> ember's split-K kernel
    from .kv_append import replace_kv_kernels  # TVM's rope and KV append -> ember's (PDL) kernels
    from .prefill_attention import replace_prefill_attention  # TVM's SIMT ragged prefill -> ember's mma kernel

    return gpu_relax_pipeline(target, tvm_cuda, prefill_rules(), decode_rules(), "ember.cuda",
                              after_schedule=[replace_decode_attention, replace_kv_kernels, replace_prefill_attention],
                              error=CudaToolchainError)


def build_cuda(mod: tvm.IRModule, archs: list[str], cuda_graph: bool = False) -> Executable:
    """Compile a Relax module to one executable with a cubin per arch (no PTX, no CUDA source).
    `cuda_graph`: TVM's RewriteCUDAGraph captures the static-shape regions of each function into CUDA graphs.
    On sm_90+ builds ember's kernels launch with programmatic dependent launch (pdl.py)."""
    import tvm

    if not tvm.runtime.enabled("cuda"):
        raise CudaToolchainError("tvm's CUDA runtime is not loaded, so kernels would be embedded as source: "
                                 "call prepare_cuda_compile_process() before `import tvm`")
    from . import pdl

    target = cuda_target(archs)
    tir_pipeline = pdl.register_pipeline() if pdl.enabled(archs) else "default"
    start = time.perf_counter()
    preload_tensor_intrinsics()
    config = {**PASS_CONFIG, "relax.backend.use_cuda_graph": cuda_graph}
    with target, tvm.transform.PassContext(opt_level=3, config=config), multi_arch_compile(archs) as stats:
        try:
            ex = tvm.compile(mod, target=target, relax_pipeline=cuda_relax_pipeline(target), tir_pipeline=tir_pipeline)
        except Exception as err:
            if stats.error is not None:
                raise stats.error from err
            raise
    if stats.calls == 0:
        raise CudaToolchainError("tvm.compile never called the nvcc hook: the CUDA kernels were not compiled")
    log.info("build_cuda %s: %.1f s (nvcc %.1f s, %d call(s), %d B source)", ",".join(archs),
             time.perf_counter() - start, stats.seconds, stats.calls, stats.source_bytes)
    return ex
