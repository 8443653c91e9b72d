"""Syntax check of every Metal kernel with zig's clang (no Apple tool runs on Linux; tvm-metal.md §5).

Each kernel of the metal module is one translation unit that starts with `#include <metal_stdlib>`; clang parses
it as freestanding C++17 against msl_prelude.h (installed as that header), all kernels in one clang run.

What a pass proves: the text is well-formed, every identifier and builtin it uses is declared (a misspelled
builtin or type is an error) and types agree under the prelude's approximations. What it does not prove: that
Apple's compiler accepts it (address spaces, attributes and buffer indices, exact builtin overloads, half vector
types are not checked), nor anything about results or speed. Only a Mac settles those (`ember verify`).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..zig import ZigError, cache_dir

PRELUDE = "msl_prelude.h"
CLANG_FLAGS = ("-fsyntax-only", "-nostdinc", "-x", "c++", "-std=c++17", "-ferror-limit=5",
               "-fno-caret-diagnostics", "-Wno-unknown-attributes", "-Wno-user-defined-literals",
               "-Wno-unused-value", "-Wno-c99-designator")
_DIAGNOSTIC = re.compile(r"^(?P<file>[^:\n]+?):(?P<line>\d+):(?P<col>\d+): (?:fatal )?error: (?P<msg>.*)$", re.M)


@dataclass
class KernelFailure:
    kernel: str
    error: str  # the first error clang reports, "line:col: message"


@dataclass
class MslReport:
    kernels: int = 0
    failures: list[KernelFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if self.ok:
            return f"MSL syntax check: {self.kernels} kernels pass ({self.seconds:.2f} s)"
        first = self.failures[0]
        return (f"MSL syntax check: {len(self.failures)} of {self.kernels} kernels fail "
                f"(first: {first.kernel}: {first.error})")


def prelude_text() -> str:
    return resources.files(__package__).joinpath(PRELUDE).read_text()


def check_msl(kernels: dict[str, str]) -> MslReport:
    """Parse each kernel's MSL ({name: translation unit}); the report lists the kernels clang rejects."""
    started = time.perf_counter()
    report = MslReport(kernels=len(kernels))
    if not kernels:
        return report
    with tempfile.TemporaryDirectory(prefix="ember-msl-") as tmp:
        folder = Path(tmp)
        (folder / "metal_stdlib").write_text(prelude_text())
        names: dict[str, str] = {}
        for i, (name, text) in enumerate(kernels.items()):
            unit = f"k{i:05d}.metal.cpp"
            (folder / unit).write_text(text)
            names[unit] = name
        done = _clang([*CLANG_FLAGS, "-I", str(folder), *names], folder)
        first: dict[str, str] = {}
        for m in _DIAGNOSTIC.finditer(done.stderr):
            unit = os.path.basename(m.group("file"))
            if unit in names and unit not in first:
                first[unit] = f"{m.group('line')}:{m.group('col')}: {m.group('msg')}"
            elif unit not in names and "prelude" not in first:
                first["prelude"] = f"{m.group('file')}:{m.group('line')}: {m.group('msg')}"
        if done.returncode != 0 and not first:
            raise ZigError(f"zig clang failed (exit {done.returncode}) without a diagnostic: "
                           f"{done.stderr.strip()[-400:]}")
        report.failures = [KernelFailure(names.get(unit, unit), error) for unit, error in first.items()]
    report.seconds = time.perf_counter() - started
    return report


def _clang(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        import ziglang  # noqa: F401
    except ImportError:
        raise ZigError("the MSL check needs the ziglang package (pip install 'ziglang==0.17.1')") from None
    cache = str(cache_dir())
    env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=cache, ZIG_LOCAL_CACHE_DIR=cache)
    return subprocess.run([sys.executable, "-m", "ziglang", "clang", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


__all__ = ["KernelFailure", "MslReport", "check_msl", "prelude_text"]
