"""CUDA target: build toolchain (stub driver, multi-arch nvcc, library checks) and pipeline.

Importing this package stays light: it never imports tvm (CudaTarget imports what it needs when called). Import the submodules you need:
`stub_driver` (before `import tvm`), `nvcc`, `library_check`, `pipeline`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import EmberError
from ..base import BuildOptions, Progress, Target

if TYPE_CHECKING:
    import tvm

    from ...runtime.artifact import TargetInfo


log = logging.getLogger(__name__)


def chained(table: Mapping[str, Any], op: str, second: Callable[..., Any]) -> dict[str, Any]:
    """`table` with `second` tried for `op` after the lowering already there (a None result falls through)."""
    first = table.get(op)

    def both(it: Any, node: Any, args: list) -> Any:
        result = first(it, node, args) if first is not None else None
        return result if result is not None else second(it, node, args)

    return {**table, op: both}


class CudaToolchainError(EmberError, RuntimeError):
    """The CUDA build toolchain is missing or misused; the message is one line."""


class CudaTarget(Target):
    name = "cuda"
    forms = "cuda, cuda:sm_XX[,sm_YY...]"
    default_quant = "q0f16"
    default_dtype = "float16"
    attention_features = frozenset({"window_layers", "softcap"})  # attention.py's and prefill_attention.py's kernels
    # ember's NCCL collectives, compiled into the library of a tensor-parallel build (nccl.py)
    collectives = {"all_reduce": "ember_tp_nccl_allreduce", "all_gather": "ember_tp_nccl_allgather"}  # = nccl.COLLECTIVES

    def __init__(self, spec: str, archs: list[str]) -> None:
        super().__init__(spec)
        self.archs = archs
        self._prefill_gemm: Any = None  # prefill_gemm.PrefillGemm once lowerings() chose it
        self._prefill_qgemm: Any = None  # prefill_qgemm.PrefillQGemm, likewise
        self._nccl: Any = None  # nccl.NcclCollectives: whether the collectives were lowered to NCCL's

    @classmethod
    def parse(cls, spec: str) -> CudaTarget:
        from .nvcc import parse_cuda_target  # no tvm import

        return cls(spec, parse_cuda_target(spec))

    def prepare_process(self) -> None:
        from .stub_driver import prepare_cuda_compile_process

        prepare_cuda_compile_process()

    def tvm_target(self) -> tvm.target.Target:
        from .pipeline import cuda_target

        return cuda_target(self.archs)

    def lowerings(self) -> Mapping[str, Any]:
        """decode1's quantized linear layers on ember's GEMV (native_gemv.py), the batched decode's on its low-batch
        GEMM (native_lowbatch.py), the GGUF formats kept native on kgemv.cuh / klowbatch.cuh (native_kgemv.py,
        native_klowbatch.py); EMBER_CUDA_GEMV=0 keeps dlight's for both, EMBER_CUDA_LOWBATCH=0 for the latter.
        add_rms_norm on one kernel (native_norm.py; EMBER_CUDA_NORM=0 keeps the generic add + norm). fp16-weight
        `linear` (q0f16) at decode1 and the batched decode on native_linear.py's kernels (EMBER_CUDA_LINEAR=0 or
        EMBER_CUDA_GEMV=0 keep dlight's). The prefill's 16-bit `linear` on prefill_gemm.py's GEMMs (ember's wgmma kernel
        for sm_90, CUTLASS 2 for sm_80 where the nvidia-cutlass headers are installed) where every arch is
        sm_80..sm_90 (EMBER_CUDA_GEMM=0 keeps dlight's); the
        prefill's quantized linears on prefill_qgemm.py's mma.sync GEMM (EMBER_CUDA_QGEMM=0 keeps dlight's)."""
        from . import (native_gemv, native_kgemv, native_klowbatch, native_linear, native_lowbatch, native_norm,
                       prefill_gemm, prefill_qgemm)
        from .nvcc import sm_number

        table = dict(native_gemv.LOWERINGS) if native_gemv.enabled() else {}
        if native_gemv.enabled():  # the GGUF formats kept native (Q5_0/Q5_1/K-quants): kgemv.cuh at decode1
            table = chained(table, "quant_linear", native_kgemv.lower_quant_linear)
        table = native_lowbatch.merged(table) if native_lowbatch.enabled() else table
        if native_lowbatch.enabled():  # the same formats in the batched decode: klowbatch.cuh
            table = chained(table, "quant_linear", native_klowbatch.lower_quant_linear)
        self._prefill_qgemm = prefill_qgemm.PrefillQGemm(self.archs) if prefill_qgemm.enabled() else None
        if self._prefill_qgemm is not None:
            table = chained(table, "quant_linear", self._prefill_qgemm.lower_quant_linear)
        table = {**table, **native_linear.LOWERINGS} if native_linear.enabled() else table
        self._prefill_gemm = None
        if prefill_gemm.enabled(self.archs):
            self._prefill_gemm = prefill_gemm.PrefillGemm(self.archs)
            table = chained(table, "linear", self._prefill_gemm.lower_linear)
        elif (os.environ.get(prefill_gemm.ENV, "1") != "0" and all(80 <= sm_number(a) <= 90 for a in self.archs)
              and prefill_gemm.cutlass_root() is None):
            log.warning("nvidia-cutlass headers not found (pip install --no-deps nvidia-cutlass==4.2.0.0): "
                        "the 16-bit prefill GEMMs of %s stay on TVM's WMMA schedule", ", ".join(self.archs))
        from . import native_moe
        from .nccl import NcclCollectives

        table = {**table, **native_moe.LOWERINGS}  # mixture-of-experts blocks (EMBER_CUDA_MOE=0: refused)
        self._nccl = NcclCollectives()
        table = {**table, **self._nccl.lowerings()}  # tensor-parallel builds: the NCCL object goes into the library
        return {**table, **native_norm.LOWERINGS} if native_norm.enabled() else table

    def window_in_kernels(self, kv_cache: Any) -> bool:
        """ember's decode and prefill attention kernels take the window where they cover the cache (fp16/bf16, head
        dim 64, 128 or 256, GQA groups up to 8) and are not switched off (EMBER_CUDA_ATTENTION / EMBER_CUDA_PREFILL)."""
        from . import attention, prefill_attention

        group = kv_cache.num_attention_heads // kv_cache.num_kv_heads
        return (kv_cache.dtype in attention.DTYPES and kv_cache.head_dim in attention.HEAD_DIMS
                and 1 <= group <= attention.MAX_GROUP
                and os.environ.get(attention.ENV, "1") != "0" and os.environ.get(prefill_attention.ENV, "1") != "0")

    def extend_module(self, relax_mod: tvm.IRModule) -> tvm.IRModule:
        """Adds the device sampler's entry points: sample, sample_reset, sample_restore, sample_ext (sampling.py)."""
        from .sampling import add_sampler

        return add_sampler(relax_mod)

    def build(self, relax_mod: tvm.IRModule, library: Path, stage: Progress, options: BuildOptions) -> TargetInfo:
        from ...runtime.artifact import TargetInfo
        from .library_check import check_cuda_library, check_host_functions
        from .pipeline import build_cuda

        objects = [b for b in (self._prefill_gemm.start_objects() if self._prefill_gemm is not None else None,
                               self._prefill_qgemm.start_objects() if self._prefill_qgemm is not None else None,
                               self._nccl.start_objects() if self._nccl is not None else None)
                   if b is not None]
        beside = "" if not objects else " and ember's objects" + (
            " (cached)" if all(b.cached for b in objects) else " (nvcc)")
        with stage.wait(f"building kernels for {self.spec} (tvm.compile{beside})"):
            executable = build_cuda(relax_mod, self.archs, cuda_graph=options.cuda_graph)
        link: dict[str, Any] = {}
        if objects:
            if options.meanwhile is not None and not all(b.cached for b in objects):
                options.meanwhile()
            with stage.wait("waiting for nvcc: ember's objects (prefill GEMMs, NCCL collectives)"):
                link = {"addons": [str(p) for b in objects for p in b.result()], "options": objects[0].link_options()}
        with stage.wait(f"compiling and linking {library.name} (nvcc for {', '.join(self.archs)})"):
            executable.export_library(str(library), **link)
        check_cuda_library(library, self.archs)
        check_host_functions(executable.as_text(), library)
        return TargetInfo(kind="cuda", archs=self.archs, host="llvm")


__all__ = ["CudaTarget", "CudaToolchainError"]
