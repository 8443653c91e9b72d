"""The cpu target: LLVM for the build machine's architecture; used for tests and CPU deployments."""
from __future__ import annotations

import platform

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.s_tir import dlight as dl

from ...runtime.artifact import TargetInfo


def cpu_target() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm"})


def target_info() -> TargetInfo:
    return TargetInfo(kind="cpu", archs=[platform.machine()], host=str(cpu_target().attrs.get("mtriple", "")))


def _pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's cpu pipeline plus dlight's cpu GEMV/reduction schedules (parallel, vectorized decode kernels)."""

    @tvm.transform.module_pass(opt_level=0)
    def run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                [relax.transform.FuseTransposeMatmul()]
                + cpu_pipeline.library_dispatch_passes(target)
                + cpu_pipeline.legalize_passes(target)
                + [dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())]
                + cpu_pipeline.dataflow_lower_passes(target)
                + cpu_pipeline.finalize_passes(target)
            )
            return seq(mod)

    return run


def build_cpu(mod: tvm.IRModule) -> tvm.runtime.Executable:
    target = cpu_target()
    return tvm.compile(mod, target=target, relax_pipeline=_pipeline(target))
