"""A metal build, start to end: tvm.compile, the MSL checks, the Mach-O link, the Mach-O check.

On Linux (any non-Mac) the dylib is linked by zig for aarch64-macos; on a Mac by TVM's default export (the
system compiler). Every check runs before the artifact is written: a kernel clang rejects, a Metal limit exceeded
or a symbol no macOS library provides fails the compile in one line. The Mach-O check needs the macOS wheels of
the pinned TVM (macos_wheels.py downloads them once); without them the build succeeds with a note.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import GPU_FAMILY, HOST_TRIPLE, MetalBuildError

if TYPE_CHECKING:
    import tvm

    from ...runtime.artifact import TargetInfo
    from ..base import Progress

THREADGROUP_MEMORY_BYTES = 32768  # apple/m1-gpu's max_shared_memory_per_block


def library_functions(executable: Any) -> list[str]:
    """The functions the Relax VM looks up in the library (kernels' host wrappers, shape functions); runtime
    globals (vm.builtin.*, ...) are dotted names and come from TVM's runtime."""
    text = executable.as_text()
    names = [line[1:].split(" ", 1)[0] for line in text.splitlines()
             if line.startswith("@") and line.rstrip().endswith("packed_func;")]
    return sorted({n for n in names if "." not in n})


def msl_kernels(executable: Any) -> dict[str, str]:
    from .limits import split_kernels
    from .pipeline import metal_modules

    modules = metal_modules(executable)
    if len(modules) != 1:
        raise MetalBuildError(f"expected one metal module in the build, found {len(modules)}")
    return split_kernels(modules[0].inspect_source())


def export(executable: Any, library: Path) -> None:
    from ..zig import MACOS_MIN, MACOS_TARGET, exporter

    if platform.system() == "Darwin":  # the system compiler (TVM's default adds -undefined dynamic_lookup)
        executable.export_library(str(library), options=[f"-mmacosx-version-min={MACOS_MIN}",
                                                          f"-Wl,-install_name,@rpath/{library.name}"])
        return

    executable.export_library(str(library), fcompile=exporter(MACOS_TARGET))


def build_metal_library(relax_mod: tvm.IRModule, library: Path, stage: Progress) -> TargetInfo:
    from ...runtime.artifact import TargetInfo
    from ..zig import MACOS_MIN
    from .limits import msl_limits
    from .macho_check import check_dylib
    from .macos_wheels import MacosWheelsUnavailable, runtime_exports
    from .msl_check import check_msl
    from .pipeline import build_metal

    with stage.wait("building kernels for metal (tvm.compile, apple/m1-gpu)"):
        executable = build_metal(relax_mod)
    kernels = msl_kernels(executable)
    with stage.wait(f"checking {len(kernels)} Metal kernels (clang syntax, limits)"):
        syntax = check_msl(kernels)
        limits = msl_limits(kernels)
    if not syntax.ok:
        first = syntax.failures[0]
        raise MetalBuildError(f"{len(syntax.failures)} of {syntax.kernels} Metal kernels fail the MSL syntax check "
                              f"(first: {first.kernel}: {first.error})")
    problems = limits.problems(THREADGROUP_MEMORY_BYTES)
    if problems:
        raise MetalBuildError(f"{len(problems)} Metal kernel(s) exceed Metal's limits (first: {problems[0]})")
    with stage.wait(f"linking {library.name} (Mach-O arm64, macOS {MACOS_MIN}+)"):
        export(executable, library)
    checks: dict[str, Any] = {
        "msl_kernels": syntax.kernels, "msl_syntax": "pass",
        "simdgroup_kernels": sum("simdgroup_multiply_accumulate" in k for k in kernels.values()),
        "max_threadgroup_memory_bytes": limits.max_threadgroup_bytes,
    }
    with stage.wait(f"checking {library.name} against the macOS wheels of TVM"):
        try:
            providers = runtime_exports()
        except MacosWheelsUnavailable as err:
            providers, checks["macho"] = None, f"skipped: {err}"
        report = check_dylib(library, library_functions(executable), providers)
    if not report.ok:
        raise MetalBuildError(f"{library.name} would not load on a Mac: {report.problems[0]}")
    checks.setdefault("macho", "pass")
    checks["macho_undefined_symbols"] = len(report.undefined)
    checks["macho_exports_checked"] = len(report.entry_points)
    return TargetInfo(kind="metal", archs=[GPU_FAMILY], host=HOST_TRIPLE, checks=checks)


__all__ = ["build_metal_library", "export", "library_functions", "msl_kernels"]
