"""Static check that a metal library is a dylib a Mac's TVM runtime can load (read with lief, no Mac needed).

- Mach-O 64-bit, arm64, filetype DYLIB, LC_BUILD_VERSION macOS with minos <= the one ember targets;
- it loads only /usr/lib/libSystem.B.dylib (and libc++, if any);
- it exports `__tvm_ffi__library_bin` (the packed imports: the MSL module), `__tvm_ffi__library_ctx`, and
  `__tvm_ffi_<name>` for every function the Relax VM looks up in it;
- every undefined symbol has a provider: a symbol bound to a library must be among that library's exports
  (libSystem's from zig's .tbd stub), a flat-lookup one (TVM's FFI, `-undefined dynamic_lookup`) among the exports
  of the libraries the Mac's runtime loads globally (the macOS wheels of the pinned TVM, macos_wheels.py).
Without those wheels (`exports=None`) the flat-lookup symbols are listed as unchecked, not as failures.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..zig import MACOS_MIN
from .macos_wheels import LIBSYSTEM, RuntimeExports

LIBCXX = "/usr/lib/libc++.1.dylib"
ALLOWED_LIBRARIES = (LIBSYSTEM, LIBCXX)
ENTRY_SYMBOLS = ("__tvm_ffi__library_bin", "__tvm_ffi__library_ctx")
FLAT_LOOKUP = "flat lookup"


@dataclass
class MachOReport:
    path: str
    cpu: str = ""
    filetype: str = ""
    minos: str = ""
    sdk: str = ""
    install_name: str = ""
    size: int = 0
    libraries: list[str] = field(default_factory=list)
    entry_points: list[str] = field(default_factory=list)  # exported symbols checked (Mach-O spelling)
    undefined: dict[str, str] = field(default_factory=dict)  # symbol -> provider ("" = unchecked)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unchecked(self) -> list[str]:
        return sorted(s for s, p in self.undefined.items() if not p)

    def summary(self) -> str:
        lines = [f"{self.path}: Mach-O {self.cpu} {self.filetype}, macOS minos {self.minos} (sdk {self.sdk}), "
                 f"{self.size:,} bytes, install name {self.install_name}",
                 f"  loads: {', '.join(self.libraries) or 'nothing'}",
                 f"  exports: {len(self.entry_points)} entry points the runtime calls, all present"
                 if not any("export" in p for p in self.problems) else "  exports: see problems",
                 "  undefined symbols:"]
        lines += [f"    {s} <- {p or 'UNCHECKED (no macOS wheels)'}" for s, p in sorted(self.undefined.items())]
        lines += [f"  PROBLEM: {p}" for p in self.problems] or ["  result: pass"]
        return "\n".join(lines)


@contextlib.contextmanager
def _quiet_lief() -> Iterator[None]:
    import lief

    lief.logging.disable()  # lief logs lazy-binding parse notes on stderr
    try:
        yield
    finally:
        lief.logging.enable()


def _version(parts: Sequence[int]) -> str:
    return ".".join(str(p) for p in parts)


def _at_most(found: Sequence[int], limit: str) -> bool:
    wanted = [int(p) for p in limit.split(".")]
    return list(found)[:len(wanted)] <= wanted


def check_dylib(path: str | Path, functions: Sequence[str], exports: RuntimeExports | None) -> MachOReport:
    """Check `path` (see the module doc); `functions`: the names the VM looks up (build.library_functions)."""
    import lief

    path = Path(path)
    report = MachOReport(str(path), size=path.stat().st_size if path.is_file() else 0)
    with _quiet_lief():
        fat = lief.MachO.parse(str(path)) if path.is_file() else None
    if fat is None or fat.size != 1:
        report.problems.append("not a single-architecture Mach-O file")
        return report
    binary = fat.at(0)
    header = binary.header
    report.cpu = header.cpu_type.name
    report.filetype = header.file_type.name
    if header.cpu_type != lief.MachO.Header.CPU_TYPE.ARM64:
        report.problems.append(f"cpu type {report.cpu}, not ARM64")
    if header.file_type != lief.MachO.Header.FILE_TYPE.DYLIB:
        report.problems.append(f"file type {report.filetype}, not DYLIB")
    if binary.has_build_version:
        build = binary.build_version
        report.minos, report.sdk = _version(build.minos), _version(build.sdk)
        if build.platform != lief.MachO.BuildVersion.PLATFORMS.MACOS:
            report.problems.append(f"built for platform {build.platform.name}, not MACOS")
        elif not _at_most(build.minos, MACOS_MIN):
            report.problems.append(f"needs macOS {report.minos}, ember targets macOS {MACOS_MIN}+")
    else:
        report.problems.append("no LC_BUILD_VERSION (macOS version unknown)")

    loads = [lib.name for lib in binary.libraries if lib.command.name == "LOAD_DYLIB"]
    ids = [lib.name for lib in binary.libraries if lib.command.name == "ID_DYLIB"]
    report.install_name = ids[0] if ids else ""
    report.libraries = loads
    report.problems += [f"loads {lib}, which a Mac does not have (allowed: {', '.join(ALLOWED_LIBRARIES)})"
                        for lib in loads if lib not in ALLOWED_LIBRARIES]

    exported = {s.name for s in binary.exported_symbols}
    wanted = [f"_{name}" for name in ENTRY_SYMBOLS] + [f"___tvm_ffi_{fn}" for fn in functions]
    report.entry_points = wanted
    missing = [s for s in wanted if s not in exported]
    if missing:
        report.problems.append(f"{len(missing)} entry point(s) not exported, e.g. {missing[0]}")

    for symbol in binary.imported_symbols:
        library = _bound_library(symbol, loads)
        provider = _provider(symbol.name, library, exports)
        report.undefined[symbol.name] = provider
        checkable = library == LIBSYSTEM or (library is None and exports is not None)
        if not provider and checkable:
            where = library or f"{FLAT_LOOKUP} (libSystem and the TVM runtime libraries)"
            report.problems.append(f"undefined symbol {symbol.name} is not exported by {where}")
    return report


def _bound_library(symbol, loads: list[str]) -> str | None:
    """The library a symbol is bound to, or None for a flat-namespace lookup."""
    ordinal = None
    if symbol.has_binding_info:
        info = symbol.binding_info
        if info.has_library:
            return info.library.name
        ordinal = info.library_ordinal
    if ordinal is None:
        ordinal = symbol.library_ordinal
    if 1 <= ordinal <= len(loads):
        return loads[ordinal - 1]
    return None  # 0 / -2 (BIND_SPECIAL_DYLIB_FLAT_LOOKUP): resolved from the loaded images at run time


def _provider(name: str, library: str | None, exports: RuntimeExports | None) -> str:
    """Who provides `name` ("" = nobody known: libc++ and, without the wheels, TVM's symbols go unchecked)."""
    from .macos_wheels import libsystem_exports

    if library is not None:
        return library if library == LIBSYSTEM and name in libsystem_exports() else ""
    if name in libsystem_exports():
        return f"{LIBSYSTEM} ({FLAT_LOOKUP})"
    found = exports.provider(name) if exports is not None else None
    return f"{found} ({FLAT_LOOKUP})" if found else ""


__all__ = ["ALLOWED_LIBRARIES", "ENTRY_SYMBOLS", "MachOReport", "check_dylib"]
