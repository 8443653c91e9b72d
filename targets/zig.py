"""Cross C compiler and linker from PyPI (`ziglang`): builds host code and shared libraries for machines other than
the build machine (macOS arm64 for metal, Linux aarch64 for cpu:aarch64) with no system toolchain.

zig keeps its cache in ~/.cache/ember/zig (ZIG_GLOBAL_CACHE_DIR): the first link for a target builds that target's
libc stubs (tens of seconds, tvm-metal.md §4), later links take a fraction of a second.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import EmberError

MACOS_MIN = "13.0"  # LC_BUILD_VERSION minos of metal libraries (zig defaults to its newest SDK's)
MACOS_TARGET = f"aarch64-macos.{MACOS_MIN}"
LINUX_AARCH64_TARGET = "aarch64-linux-gnu.2.28"  # glibc of the manylinux_2_28 wheels the runtime installs there


class ZigError(EmberError, RuntimeError):
    """zig is missing or failed; the message is one line (the compiler's output follows it)."""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ember" / "zig"


def run_zig(args: Sequence[str], what: str) -> None:
    """`python -m ziglang <args>`; ZigError naming `what` if it fails."""
    try:
        import ziglang  # noqa: F401
    except ImportError:
        raise ZigError(f"{what} needs the ziglang package (pip install 'ziglang==0.17.1')") from None
    cache = str(cache_dir())
    env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=cache, ZIG_LOCAL_CACHE_DIR=cache)
    done = subprocess.run([sys.executable, "-m", "ziglang", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ZigError(f"{what} failed (zig {args[0]}, exit {done.returncode}):\n{done.stderr.strip()[-4000:]}")


def link_shared(output: str, objects: Sequence[str], zig_target: str, options: Sequence[str] = ()) -> None:
    """Link objects into a shared library for `zig_target` (e.g. MACOS_TARGET, LINUX_AARCH64_TARGET)."""
    extra: list[str] = []
    if "macos" in zig_target:
        # TVM's FFI symbols come from libtvm_ffi.dylib, which the runtime has loaded RTLD_GLOBAL by then.
        extra = ["-undefined", "dynamic_lookup", f"-Wl,-install_name,@rpath/{os.path.basename(output)}"]
    run_zig(["cc", "-target", zig_target, "-shared", *extra, "-o", output, *objects, *options],
            f"linking {os.path.basename(output)} for {zig_target}")


def compile_c(source: str, output: str, zig_target: str, flags: Sequence[str] = ()) -> None:
    """Compile one C file to an object for `zig_target`."""
    run_zig(["cc", "-target", zig_target, "-c", "-O3", "-fPIC", *flags, "-o", output, source],
            f"compiling {os.path.basename(source)} for {zig_target}")


def exporter(zig_target: str, options: Sequence[str] = ()):
    """An `fcompile` for TVM's export_library: links its objects (host code, packed device code, addons) with zig."""

    def fcompile(output: str, objects: Sequence[str], options_: Sequence[str] | None = None, **_kw) -> None:
        link_shared(output, list(objects), zig_target, [*options, *(options_ or [])])

    fcompile.output_format = "so"  # type: ignore[attr-defined]
    return fcompile


__all__ = ["LINUX_AARCH64_TARGET", "MACOS_TARGET", "ZigError", "compile_c", "exporter", "link_shared", "run_zig"]
