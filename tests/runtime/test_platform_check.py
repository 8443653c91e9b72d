"""The system check of artifacts and devices (runtime/platform_check.py), on Linux and on a simulated Mac."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from ember.errors import ArtifactError, InputError
from ember.runtime import platform_check
from ember.runtime.artifact import TargetInfo

METAL = SimpleNamespace(name="tiny", target=TargetInfo("metal", ["apple-m1"], "arm64-apple-macos"))
CUDA = SimpleNamespace(name="tiny", target=TargetInfo("cuda", ["sm_80", "sm_90"], "llvm"))
CPU = SimpleNamespace(name="tiny", target=TargetInfo("cpu", ["x86_64", "x86-64-v4"], ""))


@pytest.fixture
def on(monkeypatch):
    def machine(system: str, arch: str) -> None:
        monkeypatch.setattr(platform_check.platform, "system", lambda: system)
        monkeypatch.setattr(platform_check.platform, "machine", lambda: arch)

    return machine


def refused(error: type[Exception], message: str):
    return pytest.raises(error, match=f"^{re.escape(message)}$")


def test_metal_artifact_on_linux(on):
    on("Linux", "x86_64")
    message = "artifact tiny was built for metal (Apple silicon, macOS); this machine is Linux x86_64"
    with refused(ArtifactError, message):
        platform_check.check_artifact_os(METAL)
    platform_check.check_artifact_os(CUDA)
    platform_check.check_artifact_os(CPU)


def test_cuda_and_cpu_artifacts_on_a_mac(on):
    on("Darwin", "arm64")
    with refused(ArtifactError, "artifact tiny was built for cuda (sm_80, sm_90; Linux); this machine is macOS arm64"):
        platform_check.check_artifact_os(CUDA)
    message = "artifact tiny was built for cpu (x86_64, x86-64-v4; Linux); this machine is macOS arm64"
    with refused(ArtifactError, message):
        platform_check.check_artifact_os(CPU)
    platform_check.check_artifact_os(METAL)


def test_devices_need_their_system(on):
    on("Linux", "aarch64")
    with refused(InputError, "device metal needs macOS on Apple silicon; this machine is Linux aarch64"):
        platform_check.check_device_os("metal")
    err = pytest.raises(InputError, platform_check.check_device_os, "metal").value
    assert err.cli_message == "--device metal needs macOS on Apple silicon; this machine is Linux aarch64"
    platform_check.check_device_os("cuda")
    on("Darwin", "arm64")
    with refused(InputError, "device cuda needs Linux with an NVIDIA GPU; this machine is macOS arm64"):
        platform_check.check_device_os("cuda")
    platform_check.check_device_os("metal")
    platform_check.check_device_os("cpu")


def test_metal_sidecar_is_in_the_macos_wheel():
    """ensure_device_runtime("metal") loads the file the macOS arm64 apache-tvm wheel ships (downloaded with pip)."""
    import zipfile

    from ember.runtime.tvm_import import SIDECARS
    from ember.targets.metal.macos_wheels import ensure_wheels

    with zipfile.ZipFile(ensure_wheels()["apache-tvm"]) as wheel:
        assert f"tvm/lib/{SIDECARS['metal'][1]}" in wheel.namelist()
