"""What a Mac's runtime provides to a metal library: the export tables of the macOS arm64 wheels of the TVM this
build uses (downloaded once with pip into ~/.cache/ember/macos-wheels), and libSystem's exports (from the .tbd stub
zig ships).

A metal dylib leaves TVM's FFI symbols undefined (`-undefined dynamic_lookup`): dyld finds them in the images the
process loaded with global visibility. On a Mac those are libtvm_ffi.dylib (tvm_ffi loads it RTLD_GLOBAL) and
libtvm_runtime.dylib (tvm loads it RTLD_GLOBAL); the compiler and the Metal runtime sidecar are RTLD_LOCAL and
provide nothing to it.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ...errors import EmberError

WHEEL_PLATFORM = "macosx_14_0_arm64"
WHEEL_PYTHON = "3.12"
# distribution -> the dylibs in its wheel that the runtime loads RTLD_GLOBAL (see the module doc)
GLOBAL_LIBRARIES = {
    "apache-tvm-ffi": ("tvm_ffi/lib/libtvm_ffi.dylib",),
    "apache-tvm": ("tvm/lib/libtvm_runtime.dylib",),
}
LIBSYSTEM = "/usr/lib/libSystem.B.dylib"
DOWNLOAD_TIMEOUT_S = 600


class MacosWheelsUnavailable(EmberError):
    """The macOS wheels could not be found or downloaded (one line: why)."""


@dataclass(frozen=True)
class RuntimeExports:
    """Symbols (Mach-O spelling, leading underscore) each providing library exports."""

    libraries: dict[str, frozenset[str]]  # "apache-tvm-ffi 0.1.14.post1: tvm_ffi/lib/libtvm_ffi.dylib" -> symbols

    def provider(self, symbol: str) -> str | None:
        return next((name for name, symbols in self.libraries.items() if symbol in symbols), None)


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ember" / "macos-wheels"


def pinned_versions() -> dict[str, str]:
    """The versions this process compiles with (pyproject pins them): the Mac must run the same."""
    try:
        return {dist: metadata.version(dist) for dist in GLOBAL_LIBRARIES}
    except metadata.PackageNotFoundError as err:
        raise MacosWheelsUnavailable(f"{err.name} is not installed, so its macOS wheel cannot be chosen") from None


def _wheel_name(dist: str) -> str:
    return dist.replace("-", "_")


def find_wheel(folder: Path, dist: str, version: str) -> Path | None:
    pattern = re.compile(rf"{re.escape(_wheel_name(dist))}-{re.escape(version)}-.*macosx_\d+_\d+_arm64\.whl$")
    found = sorted(p for p in folder.glob("*.whl") if pattern.match(p.name)) if folder.is_dir() else []
    return found[0] if found else None


def ensure_wheels(download: bool = True) -> dict[str, Path]:
    """dist -> its macOS arm64 wheel in the cache, downloading the missing ones with pip."""
    folder = cache_dir()
    versions = pinned_versions()
    wheels = {d: find_wheel(folder, d, v) for d, v in versions.items()}
    missing = [f"{d}=={versions[d]}" for d, w in wheels.items() if w is None]
    if missing and not download:
        raise MacosWheelsUnavailable(f"not in {folder}: {', '.join(missing)}")
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder):  # parallel compiles (pytest -n) share the cache
            wheels = {d: find_wheel(folder, d, v) for d, v in versions.items()}
            missing = [f"{d}=={versions[d]}" for d, w in wheels.items() if w is None]
            if missing:
                _pip_download(folder, missing)
            wheels = {d: find_wheel(folder, d, v) for d, v in versions.items()}
        still = [d for d, w in wheels.items() if w is None]
        if still:
            raise MacosWheelsUnavailable(f"pip download gave no macOS arm64 wheel of {', '.join(still)}")
    return {d: w for d, w in wheels.items() if w is not None}


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pip_download(folder: Path, requirements: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--platform", WHEEL_PLATFORM, "--python-version", WHEEL_PYTHON, "--retries", "1", "--timeout", "20",
           "-d", str(folder), *requirements]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise MacosWheelsUnavailable(f"pip download {' '.join(requirements)}: {err}") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MacosWheelsUnavailable(f"pip download {' '.join(requirements)} failed: {why}")


def dylib_exports(data: bytes) -> frozenset[str]:
    """Exported symbol names of a Mach-O image (lief)."""
    import lief

    binary = lief.MachO.parse(data)
    image = binary.at(0) if binary is not None else None
    if image is None:
        raise MacosWheelsUnavailable("not a Mach-O image")
    return frozenset(s.name for s in image.exported_symbols)


def wheel_exports(wheel: Path, members: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """member -> its exports; cached beside the wheel as JSON (the dylibs are megabytes)."""
    cached = wheel.with_suffix(".exports.json")
    if cached.is_file() and cached.stat().st_mtime >= wheel.stat().st_mtime:
        table = json.loads(cached.read_text())
        if set(table) == set(members):
            return {m: frozenset(s) for m, s in table.items()}
    out: dict[str, frozenset[str]] = {}
    with zipfile.ZipFile(wheel) as archive:
        for member in members:
            try:
                out[member] = dylib_exports(archive.read(member))
            except KeyError:
                raise MacosWheelsUnavailable(f"{wheel.name} has no {member}") from None
    with tempfile.NamedTemporaryFile("w", dir=wheel.parent, delete=False, suffix=".tmp") as tmp:
        json.dump({m: sorted(s) for m, s in out.items()}, tmp)
    os.replace(tmp.name, cached)
    return out


def libsystem_tbd() -> Path:
    import ziglang

    path = Path(ziglang.__file__).parent / "lib" / "libc" / "darwin" / "libSystem.tbd"
    if not path.is_file():
        raise MacosWheelsUnavailable(f"zig ships no libSystem stub at {path}")
    return path


# a top-level `exports:` or `reexports:` key and its indented block (symbols this library or its children export)
_TBD_SECTION = re.compile(r"^(?:exports|reexports):[ \t]*\n((?:^[ \t].*\n?)*)", re.M)
_TBD_ENTRY = re.compile(r"^\s*-\s+targets:\s*\[([^\]]*)\]((?:(?!^\s*-\s+targets:).)*)", re.M | re.S)
_TBD_LIST = re.compile(r"\b(symbols|weak-symbols|thread-local-symbols):\s*\[([^\]]*)\]", re.S)


# Apple's stubs list many system libraries for arm64e only; an arm64 image links against those the same way.
ARM64_TARGETS = ("arm64-macos", "arm64e-macos")


def tbd_exports(text: str, arch_targets: tuple[str, ...] = ARM64_TARGETS) -> frozenset[str]:
    """Symbols a text-based stub (.tbd v4, every document in it) exports for any of `arch_targets`."""
    symbols: set[str] = set()
    for section in _TBD_SECTION.finditer(text):
        for entry in _TBD_ENTRY.finditer(section.group(1)):
            targets = {t.strip() for t in entry.group(1).split(",")}
            if targets.isdisjoint(arch_targets):
                continue
            for _kind, names in _TBD_LIST.findall(entry.group(2)):
                symbols.update(n.strip().strip("'") for n in names.split(",") if n.strip())
    return frozenset(s for s in symbols if not s.startswith("$ld$"))


def runtime_exports(download: bool = True) -> RuntimeExports:
    """The exports of the libraries a Mac's runtime-only ember process has loaded globally (libSystem aside)."""
    versions = pinned_versions()
    libraries: dict[str, frozenset[str]] = {}
    for dist, wheel in ensure_wheels(download).items():
        for member, symbols in wheel_exports(wheel, GLOBAL_LIBRARIES[dist]).items():
            libraries[f"{dist} {versions[dist]}: {member}"] = symbols
    return RuntimeExports(libraries)


@functools.cache
def libsystem_exports() -> frozenset[str]:
    return tbd_exports(libsystem_tbd().read_text())


__all__ = ["LIBSYSTEM", "MacosWheelsUnavailable", "RuntimeExports", "cache_dir", "ensure_wheels",
           "libsystem_exports", "runtime_exports", "tbd_exports", "wheel_exports"]
