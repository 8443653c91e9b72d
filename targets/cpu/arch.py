"""The cpu architectures `--target cpu[:ARCH]` can name, and what each one means for the build.

`cpu` is the build machine (its LLVM default triple, the system C compiler and linker, the host's x86-64 level).
`cpu:aarch64` is Linux arm64 built from any machine: host code for `aarch64-linux-gnu` at the ARMv8.0-A baseline
(NEON is part of it: Raspberry Pi 4/5, Graviton, Jetson), ember's C kernels compiled and the library linked by
zig's clang (PyPI's `ziglang`) against glibc 2.28, the glibc of the manylinux_2_28 TVM wheels that run it there.
`EMBER_CPU_MCPU` names an LLVM cpu instead of the baseline (e.g. `cortex-a76` for a Pi 5, `neoverse-n1` for
Graviton 2): opt-in, recorded in the manifest's archs, and then the artifact needs that cpu's extensions.

Nothing here imports tvm.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass

MCPU_ENV = "EMBER_CPU_MCPU"
# platform.machine() spellings -> ember's arch names (the manifest's archs[0])
MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


@dataclass(frozen=True)
class CrossArch:
    """A cpu architecture ember builds for from any machine."""

    name: str  # "aarch64": the spec's suffix and the manifest's archs[0]
    triple: str  # LLVM mtriple of the host code, the manifest's target.host
    baseline: str  # the ISA level the default build needs (archs[1] when EMBER_CPU_MCPU is not set)
    mattr: tuple[str, ...]  # LLVM features of the baseline
    zig_target: str  # zig's -target for the C kernels and the link (glibc version included)


def _aarch64() -> CrossArch:
    from ..zig import LINUX_AARCH64_TARGET

    return CrossArch(name="aarch64", triple="aarch64-linux-gnu", baseline="armv8-a", mattr=("+neon",),
                     zig_target=LINUX_AARCH64_TARGET)


CROSS_ARCHS = {"aarch64": _aarch64}


def parse_arch(suffix: str) -> CrossArch:
    """The CrossArch after `cpu:`; ValueError with the accepted names otherwise."""
    name = MACHINES.get(suffix.lower(), suffix.lower())
    if name not in CROSS_ARCHS:
        raise ValueError(f"cpu:{suffix}: unknown cpu arch (use cpu for the build machine, or "
                         f"{', '.join('cpu:' + a for a in CROSS_ARCHS)}; EMBER_CPU_MCPU picks the LLVM cpu)")
    return CROSS_ARCHS[name]()


def build_machine() -> str:
    """The build machine's arch in ember's spelling (platform.machine() when ember does not know it)."""
    return MACHINES.get(platform.machine().lower(), platform.machine())


def mcpu_override() -> str | None:
    """EMBER_CPU_MCPU, if set and not empty."""
    return os.environ.get(MCPU_ENV) or None


__all__ = ["CROSS_ARCHS", "CrossArch", "MACHINES", "MCPU_ENV", "build_machine", "mcpu_override", "parse_arch"]
