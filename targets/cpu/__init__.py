"""The cpu target: LLVM for the build machine's architecture; used for tests and CPU deployments."""
from __future__ import annotations

import platform

import tvm
from tvm import relax

from ...runtime.artifact import TargetInfo


def cpu_target() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm"})


def target_info() -> TargetInfo:
    return TargetInfo(kind="cpu", archs=[platform.machine()], host=str(cpu_target()))


def build_cpu(mod: tvm.IRModule) -> tvm.runtime.Executable:
    target = cpu_target()
    mod = relax.transform.FuseTransposeMatmul()(mod)
    with target:
        return tvm.compile(mod, target=target)
