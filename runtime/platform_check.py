"""Which operating system an artifact runs on, and the one-line refusals when this machine is not it.

A metal artifact holds a Mach-O dylib and runs on macOS (Apple silicon) only; cpu and cuda artifacts hold ELF
libraries and run on Linux. The check reads the manifest alone, before TVM is imported.
"""
from __future__ import annotations

import platform

from ..errors import ArtifactError, InputError
from .artifact import Manifest

MACOS, LINUX = "macOS", "Linux"
_SYSTEMS = {"Darwin": MACOS, "Linux": LINUX}


def machine() -> str:
    """This machine as the messages name it: 'Linux x86_64', 'macOS arm64'."""
    return f"{_SYSTEMS.get(platform.system(), platform.system())} {platform.machine()}"


def artifact_os(manifest: Manifest) -> str:
    host = manifest.target.host.lower()
    return MACOS if manifest.target.kind == "metal" or "apple" in host or "darwin" in host else LINUX


def describe(manifest: Manifest) -> str:
    """'metal (Apple silicon, macOS)', 'cuda (sm_80, sm_90; Linux)', 'cpu (x86_64, x86-64-v4; Linux)'."""
    if manifest.target.kind == "metal":
        return "metal (Apple silicon, macOS)"
    detail = ", ".join(manifest.target.archs) or manifest.target.host
    return f"{manifest.target.kind} ({detail}; {artifact_os(manifest)})" if detail else \
        f"{manifest.target.kind} ({artifact_os(manifest)})"


def check_artifact_os(manifest: Manifest) -> None:
    here = _SYSTEMS.get(platform.system())
    if here is not None and artifact_os(manifest) != here:
        raise ArtifactError(f"artifact {manifest.name} was built for {describe(manifest)}; this machine is {machine()}")


def check_device_os(kind: str) -> None:
    """`--device metal` needs macOS; the other devices need Linux (the only system ember's cpu/cuda builds run on)."""
    here = _SYSTEMS.get(platform.system())
    if kind == "metal" and here != MACOS:
        raise InputError.about(f"{{device}} metal needs macOS on Apple silicon; this machine is {machine()}")
    if kind == "cuda" and here == MACOS:
        raise InputError.about(f"{{device}} cuda needs Linux with an NVIDIA GPU; this machine is {machine()}")


__all__ = ["LINUX", "MACOS", "artifact_os", "check_artifact_os", "check_device_os", "describe", "machine"]
