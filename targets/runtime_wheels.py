"""The TVM runtime another machine runs an artifact with: the `apache-tvm` and `apache-tvm-ffi` wheels of the versions
this build uses, for that machine's platform, downloaded once with pip into ~/.cache/ember/wheels/<platform>.

A cross build reads their libraries' export tables (with lief) to check that every symbol the library leaves
undefined is one that runtime provides (targets/cpu/elf_check.py); tools/aarch64_sysroot.py unpacks the same
wheels as the runtime of the qemu test environment. The wheels are found in the cache first, so a machine that
has them never needs the index again.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..errors import EmberError

PROJECTS = ("apache-tvm", "apache-tvm-ffi")
PYTHON_VERSION = "3.11"  # apache-tvm-ffi has per-CPython wheels; its libtvm_ffi.so is the same in all of them
# the shared libraries that export what an artifact's undefined symbols may name, per project
LIBRARIES = {"apache-tvm": ("tvm/lib/libtvm_runtime.so",), "apache-tvm-ffi": ("tvm_ffi/lib/libtvm_ffi.so",)}


class RuntimeWheelError(EmberError, RuntimeError):
    """The runtime wheels for another platform are not in the cache and pip cannot download them."""


@dataclass(frozen=True)
class Pin:
    project: str
    version: str

    def __str__(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def file_prefix(self) -> str:
        return f"{self.project.replace('-', '_')}-{self.version}-"


def cache_dir(platform_tag: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ember" / "wheels" / platform_tag


def pins() -> list[Pin]:
    """The installed versions of TVM's two packages: an artifact runs with the TVM it was built with."""
    out = []
    for project in PROJECTS:
        try:
            out.append(Pin(project, version(project)))
        except PackageNotFoundError:
            raise RuntimeWheelError(f"{project} is not installed (pip install -e .)") from None
    return out


def _cached(folder: Path, pin: Pin, python_version: str) -> Path | None:
    """The cached wheel of `pin` for this Python: pure (py3), for its CPython (cp311) or for the stable ABI."""
    cp = "cp" + python_version.replace(".", "")
    prefix = pin.file_prefix.lower()

    def fits(name: str) -> bool:
        tags = name[len(prefix):]
        return tags.startswith(("py3-", "py2.py3-", f"{cp}-")) or "-abi3-" in tags

    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix) and fits(p.name.lower()))
    return found[-1] if found else None


def runtime_wheels(platform_tag: str, python_version: str = PYTHON_VERSION,
                   requirements: list[Pin] | None = None) -> list[Path]:
    """The wheels of `requirements` (default: TVM's two, `pins()`) for `platform_tag` (e.g.
    manylinux_2_28_aarch64), from the cache or downloaded into it."""
    folder = cache_dir(platform_tag)
    wanted = requirements if requirements is not None else pins()
    missing = [pin for pin in wanted if _cached(folder, pin, python_version) is None]
    if missing:
        _download(folder, missing, platform_tag, python_version)
    out = []
    for pin in wanted:
        wheel = _cached(folder, pin, python_version)
        if wheel is None:
            raise RuntimeWheelError(f"pip downloaded no {platform_tag} wheel of {pin} into {folder}")
        out.append(wheel)
    return out


def platform_tags(platform_tag: str) -> list[str]:
    """`platform_tag` and the older tags a machine of that platform also runs: pip's --platform takes the tags
    literally (manylinux_2_28_aarch64 alone would not match a manylinux2014 wheel)."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform_tag)
    if not match:
        return [platform_tag]
    glibc, arch = int(match.group(1)), match.group(2)
    return [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 16, -1)] + [f"manylinux2014_{arch}"]


def _download(folder: Path, missing: list[Pin], platform_tag: str, python_version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tags = [arg for tag in platform_tags(platform_tag) for arg in ("--platform", tag)]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", *tags,
           "--python-version", python_version, "-d", str(folder), *(str(p) for p in missing)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        raise RuntimeWheelError(f"cannot run pip to download {platform_tag} wheels ({err})") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        raise RuntimeWheelError(
            f"pip cannot download {', '.join(map(str, missing))} for {platform_tag} into {folder} "
            f"({lines[-1] if lines else f'exit {done.returncode}'}); put the wheels there by hand on an offline machine")


def exported_symbols(platform_tag: str) -> dict[str, list[str]]:
    """Library path inside its wheel -> the dynamic symbols it defines, for TVM's runtime libraries on
    `platform_tag`; read once with lief and cached beside the wheels (keyed by the wheel file names)."""
    wheels = runtime_wheels(platform_tag)
    folder = cache_dir(platform_tag)
    key = "-".join(sorted(w.name for w in wheels))
    table = folder / "exports.json"
    if table.is_file():
        try:
            cached = json.loads(table.read_text())
            if cached.get("wheels") == key:
                return cached["symbols"]
        except (OSError, ValueError, KeyError):
            pass
    import lief

    symbols: dict[str, list[str]] = {}
    for pin, wheel in zip(pins(), wheels):
        with zipfile.ZipFile(wheel) as zf:
            for member in LIBRARIES[pin.project]:
                binary = lief.parse(zf.read(member))
                if binary is None:
                    raise RuntimeWheelError(f"{wheel.name}: {member} is not a library lief can read")
                symbols[member] = sorted({s.name for s in binary.dynamic_symbols if s.shndx != 0 and s.name})
    tmp = table.with_name(f".{table.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"wheels": key, "symbols": symbols}))
    os.replace(tmp, table)
    return symbols


__all__ = ["Pin", "RuntimeWheelError", "cache_dir", "exported_symbols", "pins", "runtime_wheels"]
