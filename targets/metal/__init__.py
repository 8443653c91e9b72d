"""The metal target: Apple-silicon GPUs (M1 and later), built on any machine.

Kernels are scheduled for TVM's `apple/m1-gpu` (simdgroups of 32, 1024 threads and 32 KB of threadgroup memory
per threadgroup) and kept as Metal Shading Language source inside the library; the host code is compiled for
arm64-apple-macos and linked into a Mach-O dylib (zig on Linux, the system compiler on a Mac). The Mac compiles
the MSL when it loads the library. Since no Apple tool runs here, every build is checked statically: each
kernel's MSL through clang's parser (msl_check.py), the Metal limits in the source (msl_limits.py), and the
dylib's load commands and symbols against the macOS wheels of the pinned TVM (macho_check.py).

Parsing imports no tvm.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import EmberError
from ..base import BuildOptions, Progress, Target

if TYPE_CHECKING:
    import tvm

    from ...runtime.artifact import TargetInfo

TVM_TAG = "apple/m1-gpu"
GPU_FAMILY = "apple-m1"  # the oldest GPU the kernels are scheduled for (TargetInfo.archs)
HOST_TRIPLE = "arm64-apple-macos"


class MetalBuildError(EmberError, RuntimeError):
    """A metal build produced something a Mac would not load (a kernel, a symbol, a limit); one line."""


class MetalTarget(Target):
    name = "metal"
    forms = "metal"
    default_quant = "q0f16"
    default_dtype = "float16"
    # tvm.runtime.load_module picks its loader by suffix: ".dylib" (like ".so") goes to the shared-library loader,
    # and on a Mac the name says what the file is.
    library_file = "model.dylib"

    @classmethod
    def parse(cls, spec: str) -> MetalTarget:
        # One schedule for every Apple GPU: M2/M3 tags differ from M1 only in the host cpu, not in the kernels.
        if spec != "metal":
            raise ValueError(f"metal takes no arch (it means Apple M1 and later), got {spec!r}")
        return cls(spec)

    def tvm_target(self) -> tvm.target.Target:
        from .pipeline import metal_target

        return metal_target()

    def build(self, relax_mod: tvm.IRModule, library: Path, stage: Progress, options: BuildOptions) -> TargetInfo:
        from .build import build_metal_library

        return build_metal_library(relax_mod, library, stage)


__all__ = ["GPU_FAMILY", "HOST_TRIPLE", "MetalBuildError", "MetalTarget", "TVM_TAG"]
