"""Static checks of a cross-built cpu library (cpu:aarch64), read with lief, since the build machine cannot load it.

The library must be an ELF shared object for the arch's machine; it must define what TVM's runtime looks up when it
loads a library (the packed VM executable, the thread-pool slot that ember's C kernels and TIR's parallel loops
call through); and every symbol it leaves undefined must be provided on the device: by glibc (zig links against
glibc 2.28's symbol lists, so such a symbol carries a GLIBC_x version no newer than that), by the runtime wheels'
libtvm_ffi.so / libtvm_runtime.so of the same TVM version (their export tables, targets/runtime_wheels.py), or be
weak (absent is allowed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import EmberError
from .arch import CrossArch

# what each cross arch's library must be, and the manylinux platform of the wheels that run it
MACHINES = {"aarch64": "AARCH64"}
WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64"}
GLIBC_MAX = (2, 28)
SYSTEM_LIBRARIES = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "ld-linux-aarch64.so.1"}
# looked up by name when TVM's runtime loads a library (library_module.cc): the packed imports (the VM executable)
# and the parallel-launch slot it fills with its thread pool's entry
REQUIRED_EXPORTS = ("__tvm_ffi__library_bin", "__TVMBackendParallelLaunch")


class CrossLibraryError(EmberError, RuntimeError):
    """A cross-built library would not load on its device; the message is one line naming the file."""


@dataclass
class ElfReport:
    """What the check found: machine, type, needed libraries, undefined symbols by where they come from."""

    machine: str
    file_type: str
    needed: list[str]
    from_glibc: dict[str, str] = field(default_factory=dict)  # symbol -> GLIBC_x version
    from_tvm: dict[str, str] = field(default_factory=dict)  # symbol -> library in the wheel
    weak: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    newer_glibc: dict[str, str] = field(default_factory=dict)
    exports: list[str] = field(default_factory=list)


def _glibc_version(name: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"GLIBC_(\d+(?:\.\d+)*)", name)
    return tuple(int(x) for x in match.group(1).split(".")) if match else None


def inspect_library(path: Path, tvm_exports: dict[str, list[str]]) -> ElfReport:
    """Read `path` and sort its undefined dynamic symbols; raises CrossLibraryError if it is not an ELF file."""
    import lief

    binary = lief.parse(str(path))
    if not isinstance(binary, lief.ELF.Binary):
        raise CrossLibraryError(f"{path}: not an ELF file")
    provider = {sym: lib.rsplit("/", 1)[-1] for lib, syms in tvm_exports.items() for sym in syms}
    report = ElfReport(machine=binary.header.machine_type.name, file_type=binary.header.file_type.name,
                       needed=[str(lib) for lib in binary.libraries])
    for sym in binary.dynamic_symbols:
        if not sym.name:
            continue
        if sym.shndx != 0:
            report.exports.append(sym.name)
            continue
        ver = sym.symbol_version
        aux = ver.symbol_version_auxiliary.name if ver is not None and ver.has_auxiliary_version else None
        glibc = _glibc_version(aux) if aux else None
        if glibc is not None:
            report.from_glibc[sym.name] = aux
            if glibc > GLIBC_MAX:
                report.newer_glibc[sym.name] = aux
        elif sym.name in provider:
            report.from_tvm[sym.name] = provider[sym.name]
        elif sym.binding == lief.ELF.Symbol.BINDING.WEAK:
            report.weak.append(sym.name)
        else:
            report.unresolved.append(sym.name)
    return report


def check_cross_library(path: Path, arch: CrossArch) -> ElfReport:
    """The checks of the module docstring for `arch`; CrossLibraryError (one line) on the first failure."""
    from ..runtime_wheels import exported_symbols

    report = inspect_library(path, exported_symbols(WHEEL_PLATFORMS[arch.name]))
    want = MACHINES[arch.name]
    if report.machine != want or report.file_type != "DYN":
        raise CrossLibraryError(f"{path}: expected an ELF shared object for {want}, got {report.file_type} for "
                                f"{report.machine}")
    extra = sorted(set(report.needed) - SYSTEM_LIBRARIES)
    if extra:
        raise CrossLibraryError(f"{path}: needs libraries the device may not have: {', '.join(extra)}")
    missing = [name for name in REQUIRED_EXPORTS if name not in report.exports]
    if missing:
        raise CrossLibraryError(f"{path}: does not export {', '.join(missing)} (TVM's runtime looks it up on load)")
    if report.newer_glibc:
        shown = ", ".join(f"{s}@{v}" for s, v in sorted(report.newer_glibc.items())[:5])
        raise CrossLibraryError(f"{path}: needs glibc newer than {'.'.join(map(str, GLIBC_MAX))}: {shown}")
    if report.unresolved:
        shown = ", ".join(sorted(report.unresolved)[:8])
        raise CrossLibraryError(f"{path}: {len(report.unresolved)} undefined symbols that neither glibc nor the "
                                f"{arch.name} TVM runtime wheels provide: {shown}")
    return report


__all__ = ["CrossLibraryError", "ElfReport", "check_cross_library", "inspect_library"]
