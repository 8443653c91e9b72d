"""ember's native cpu kernels (targets/cpu/native/*.c): compiled with the system C compiler at `ember compile` time
for the artifact's cpu level and linked into the same model.so as TVM's kernels, so the runtime still needs only
TVM's runtime. TIR calls them through `call_extern` (native_linear.py, attention.py). For a cross arch
(cpu:aarch64) zig's clang compiles them for that arch's zig target instead (targets/zig.py).

Objects are cached by the hash of their sources, flags and compiler version (`~/.cache/ember/native`, or
`$EMBER_CACHE_DIR/native`), so the many small builds of a test session compile the C once.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ...errors import EmberError
from .. import zig

SOURCE_DIR = Path(__file__).parent / "native"
SOURCES = ("linear.c", "attention.c", "elementwise.c", "rope.c", "moe.c")
HEADERS = ("ember_native.h",)
CC_ENV = "CC"


class NativeBuildError(EmberError):
    """The C compiler is missing or rejected ember's native kernels."""


def cache_dir() -> Path:
    root = os.environ.get("EMBER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ember")
    return Path(root) / "native"


def compiler() -> str:
    cc = os.environ.get(CC_ENV) or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise NativeBuildError("no C compiler found (cc, gcc or clang; or set CC): the cpu target compiles "
                               "ember's kernels at build time")
    return cc


def flags(mcpu: str | None) -> list[str]:
    arch = [f"-march={mcpu}"] if mcpu and mcpu != "generic" else []
    return ["-O3", "-fPIC", "-std=gnu11", "-fno-math-errno", "-Wno-psabi", *arch]


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise NativeBuildError(f"cannot run the C compiler {cc!r} ({err})") from None


def zig_flags(mcpu: str | None) -> list[str]:
    """zig cc's flags: as `flags` but no -march (zig takes its own cpu names: LLVM's with '_' for '-'), no debug
    info (zig cc adds it by default)."""
    cpu = [f"-mcpu={mcpu.replace('-', '_')}"] if mcpu and mcpu != "generic" else []
    return ["-std=gnu11", "-fno-math-errno", "-g0", *cpu]


def _zig_version() -> str:
    try:
        from importlib.metadata import version

        return "ziglang " + version("ziglang")
    except Exception:  # not installed: run_zig says so when it compiles
        return "ziglang ?"


def native_objects(mcpu: str | None, zig_target: str | None = None) -> list[str]:
    """Object files of every native kernel source for this cpu level (compiled once, then from the cache): by the
    system C compiler, or by zig's clang for `zig_target` (a cross arch)."""
    if zig_target is None:
        cc = compiler()
        opts = flags(mcpu)
        identity = (cc, _compiler_version(cc), " ".join(opts))
    else:
        cc = "zig cc"
        opts = zig_flags(mcpu)
        identity = (cc, _zig_version(), zig_target, " ".join(opts))
    digest = hashlib.sha256()
    for part in identity:
        digest.update(part.encode())
    for name in SOURCES + HEADERS:
        digest.update((SOURCE_DIR / name).read_bytes())
    key = digest.hexdigest()[:20]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SOURCES:
        obj = folder / f"{Path(name).stem}-{key}.o"
        if not obj.is_file():
            if zig_target is None:
                _compile(cc, opts, SOURCE_DIR / name, obj)
            else:
                _compile_zig(zig_target, opts, SOURCE_DIR / name, obj)
        out.append(str(obj))
    return out


def _compile(cc: str, opts: list[str], source: Path, obj: Path) -> None:
    handle, tmp = tempfile.mkstemp(suffix=".o", dir=obj.parent)
    os.close(handle)
    try:
        done = subprocess.run([cc, *opts, "-I", str(SOURCE_DIR), "-c", str(source), "-o", tmp],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise NativeBuildError(f"{cc} failed on {source.name}: {_first_error(done.stderr)}")
        os.replace(tmp, obj)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compile_zig(zig_target: str, opts: list[str], source: Path, obj: Path) -> None:
    handle, tmp = tempfile.mkstemp(suffix=".o", dir=obj.parent)
    os.close(handle)
    try:
        try:
            zig.compile_c(str(source), tmp, zig_target, [*opts, "-I", str(SOURCE_DIR)])
        except zig.ZigError as err:
            lines = str(err).splitlines()
            detail = _first_error("\n".join(lines[1:])) if len(lines) > 1 else lines[0]
            raise NativeBuildError(f"zig cc -target {zig_target} failed on {source.name}: {detail}") from None
        os.replace(tmp, obj)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _first_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if "error" in ln] or stderr.splitlines()[-1:]
    return (lines or ["no output"])[0].strip()
