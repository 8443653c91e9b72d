"""The cpu target: LLVM for the build machine's architecture plus ember's native kernels (build.py, native/);
`cpu:aarch64` cross-builds the same for Linux arm64 (arch.py)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import BuildOptions, Progress, Target
from ...runtime.tensor_parallel import HOST_COLLECTIVES
from .arch import CrossArch, parse_arch

if TYPE_CHECKING:
    import tvm

    from ...runtime.artifact import TargetInfo


class CpuTarget(Target):
    name = "cpu"
    forms = "cpu, cpu:aarch64"
    default_quant = "q0f32"
    default_dtype = "float32"
    dequant_stage = False  # the native kernels take most linear layers; the generic path sums dequantized values
    # the wheel has no cpu ccl for Disco: ember's host collectives (threads of one process, one shard each)
    collectives = dict(HOST_COLLECTIVES)

    def __init__(self, spec: str, arch: CrossArch | None = None) -> None:
        super().__init__(spec)
        self.arch = arch  # None: the build machine

    @classmethod
    def parse(cls, spec: str) -> CpuTarget:
        if spec == "cpu":
            return cls(spec)
        _, _, suffix = spec.partition(":")
        if not spec.startswith("cpu:") or not suffix:
            raise ValueError(f"{spec!r}: use cpu (the build machine) or cpu:aarch64 (Linux arm64)")
        arch = parse_arch(suffix)
        return cls(f"cpu:{arch.name}", arch)  # cpu:arm64 is cpu:aarch64 (one default folder name)

    def tvm_target(self) -> tvm.target.Target:
        from .build import cpu_target

        return cpu_target(self.arch)

    def lowerings(self) -> Mapping[str, Any]:
        from .build import cpu_lowerings

        return cpu_lowerings()

    attention_features = frozenset({"window_layers", "softcap"})  # attention.py's kernels

    def window_in_kernels(self, kv_cache: Any) -> bool:
        """attention.py's kernels take the window: head dims of whole 16-float rows up to 256 (the decode kernel's);
        float32 caches, or 16-bit ones (decode_paged_16bit: the golden references of gpu builds)."""
        return (kv_cache.dtype in ("float32", "float16", "bfloat16") and kv_cache.head_dim % 16 == 0
                and kv_cache.head_dim <= 256)

    def build(self, relax_mod: tvm.IRModule, library: Path, stage: Progress, options: BuildOptions) -> TargetInfo:
        from .build import build_cpu, target_info

        with stage.wait(f"building kernels for {self.spec} (tvm.compile)"):
            executable = build_cpu(relax_mod, self.arch)
        if self.arch is None:
            with stage.wait(f"linking {library.name}"):
                executable.export_library(str(library))
            return target_info()
        from .elf_check import check_cross_library

        with stage.wait(f"linking {library.name} for {self.arch.zig_target} (zig)"):
            executable.export_library(str(library))
        with stage.wait(f"checking {library.name} against the {self.arch.name} TVM runtime wheels"):
            check_cross_library(library, self.arch)
        return target_info(self.arch)


__all__ = ["CpuTarget"]
