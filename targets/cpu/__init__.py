"""The cpu target: LLVM for the build machine's architecture plus ember's native kernels (build.py, native/)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import BuildOptions, Progress, Target

if TYPE_CHECKING:
    import tvm

    from ...runtime.artifact import TargetInfo


class CpuTarget(Target):
    name = "cpu"
    forms = "cpu"
    default_quant = "q0f32"
    default_dtype = "float32"
    dequant_stage = False  # the native kernels take most linear layers; the generic path sums dequantized values

    @classmethod
    def parse(cls, spec: str) -> CpuTarget:
        if spec != "cpu":
            raise ValueError(f"cpu takes no arch, got {spec!r} (EMBER_CPU_MCPU picks the LLVM cpu)")
        return cls(spec)

    def tvm_target(self) -> tvm.target.Target:
        from .build import cpu_target

        return cpu_target()

    def lowerings(self) -> Mapping[str, Any]:
        from .build import cpu_lowerings

        return cpu_lowerings()

    def build(self, relax_mod: tvm.IRModule, library: Path, stage: Progress, options: BuildOptions) -> TargetInfo:
        from .build import build_cpu, target_info

        with stage.wait(f"building kernels for {self.spec} (tvm.compile)"):
            executable = build_cpu(relax_mod)
        with stage.wait(f"linking {library.name}"):
            executable.export_library(str(library))
        return target_info()


__all__ = ["CpuTarget"]
