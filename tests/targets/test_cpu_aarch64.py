"""`--target cpu:aarch64`: a tiny Llama cross-built for Linux arm64 and run under qemu-user (the arm64 python of
tools/aarch64_sysroot.py, TVM's runtime wheels for manylinux aarch64), against the same model built for this
machine: logits within float32 reordering, identical greedy tokens; q0f32 and q4f16_1 (ember's C kernels).

qemu is required: without it the qemu test fails and names the install command. EMBER_SKIP_QEMU=1 skips it
(explicitly, e.g. on a machine without apt); the build and ELF checks still run. Speed is not measured here.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ember
from ember.compiler import CompileRequest, compile_model
from ember.errors import ArtifactError
from ember.runtime.artifact import read_manifest
from ember.targets.base import parse_target
from ember.targets.cpu.arch import parse_arch
from ember.targets.cpu.elf_check import CrossLibraryError, check_cross_library

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
from model_fixtures import random_llama  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("aarch64_probe.py")
SKIP_ENV = "EMBER_SKIP_QEMU"
QUANTS = ("q0f32", "q4f16_1")
PROMPT = [1, 17, 250, 99, 5, 64, 128, 3, 200, 41, 42, 43, 7, 300, 12, 96, 180]  # 17 tokens: prefill runs the GEMMs
MAX_TOKENS = 8  # greedy decode: the GEMVs and native decode attention
ON_X86 = platform.machine() in ("x86_64", "AMD64")


def sysroot_tool():
    """tools/aarch64_sysroot.py as a module (tools/ is not a package)."""
    if "aarch64_sysroot" not in sys.modules:
        spec = importlib.util.spec_from_file_location("aarch64_sysroot", REPO / "tools" / "aarch64_sysroot.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["aarch64_sysroot"] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["aarch64_sysroot"]


# -- parsing (no build) ----------------------------------------------------------------------------------------------
def test_parse_cpu_aarch64():
    target = parse_target("cpu:aarch64")
    assert (target.name, target.spec, target.label, target.arch.triple) == ("cpu", "cpu:aarch64", "cpu-aarch64",
                                                                            "aarch64-linux-gnu")
    assert parse_target("cpu:arm64").spec == "cpu:aarch64"  # one spelling, one default folder
    assert parse_target("cpu").arch is None
    with pytest.raises(ValueError, match=r"^cpu:riscv64: unknown cpu arch \(use cpu for the build machine, or "
                                         r"cpu:aarch64; EMBER_CPU_MCPU picks the LLVM cpu\)$"):
        parse_target("cpu:riscv64")
    with pytest.raises(ValueError, match=r"^'cpu:': use cpu \(the build machine\) or cpu:aarch64 \(Linux arm64\)$"):
        parse_target("cpu:")


def test_aarch64_tvm_target_and_archs(monkeypatch):
    from ember.targets.cpu.build import cpu_target, target_info
    from ember.targets.cpu.native import zig_flags

    arch = parse_arch("aarch64")
    monkeypatch.delenv("EMBER_CPU_MCPU", raising=False)
    target = cpu_target(arch)
    assert str(target.attrs["mtriple"]) == "aarch64-linux-gnu" and list(target.attrs["mattr"]) == ["+neon"]
    assert "mcpu" not in target.attrs and bool(target.attrs["feature.has_asimd"])
    assert not bool(target.attrs["feature.has_dotprod"]) and not bool(target.attrs["feature.has_sve"])
    info = target_info(arch)
    assert (info.kind, info.archs, info.host) == ("cpu", ["aarch64", "armv8-a"], "aarch64-linux-gnu")
    monkeypatch.setenv("EMBER_CPU_MCPU", "cortex-a76")  # opt-in: a Pi 5's cpu (dotprod, fp16)
    assert str(cpu_target(arch).attrs["mcpu"]) == "cortex-a76" and bool(cpu_target(arch).attrs["feature.has_dotprod"])
    assert target_info(arch).archs == ["aarch64", "cortex-a76"]
    assert "-mcpu=cortex_a76" in zig_flags("cortex-a76")


# -- builds ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def builds(tmp_path_factory, worker_id) -> dict[tuple[str, str], Path]:
    """(quant, "cpu" | "cpu:aarch64") -> artifact folder, all from one tiny HF Llama (GQA 4:2, 2 layers). Under
    xdist the workers share one set (the first builds it under a lock; the folder is the session's own)."""
    if worker_id == "master":
        return _build_all(tmp_path_factory.mktemp("aarch64"))
    import fcntl

    folder = tmp_path_factory.getbasetemp().parent / "aarch64-builds"
    folder.mkdir(exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "done").is_file():
            return _artifacts(folder)
        out = _build_all(folder)
        (folder / "done").write_text("")
        return out


def _artifacts(folder: Path) -> dict[tuple[str, str], Path]:
    return {(quant, target): folder / f"{quant}-{target.replace(':', '-')}"
            for quant in QUANTS for target in ("cpu", "cpu:aarch64")}


def _build_all(folder: Path) -> dict[tuple[str, str], Path]:
    random_llama(seed=3).save_pretrained(folder / "hf")
    out = _artifacts(folder)
    for (quant, target), path in out.items():
        compile_model(CompileRequest(model=str(folder / "hf"), target=target, quant=quant, output=str(path)))
    return out


def test_aarch64_manifest_and_library(builds):
    for quant in QUANTS:
        path = builds[quant, "cpu:aarch64"]
        manifest = read_manifest(path)
        assert (manifest.target.kind, manifest.target.archs, manifest.target.host) == (
            "cpu", ["aarch64", "armv8-a"], "aarch64-linux-gnu")
        report = check_cross_library(path / "model.so", parse_arch("aarch64"))  # the build ran it too
        assert (report.machine, report.file_type) == ("AARCH64", "DYN")
        assert set(report.needed) <= {"libc.so.6", "libm.so.6"} and not report.unresolved
        assert set(report.from_tvm.values()) <= {"libtvm_ffi.so", "libtvm_runtime.so"}
        assert {"ember_linear", "ember_decode_attention", "ember_rope_split"} <= set(report.exports)


def test_elf_check_refuses_x86_library(builds):
    library = builds["q0f32", "cpu"] / "model.so"
    if not ON_X86:
        pytest.skip("the build machine's library is an arm64 one here")
    with pytest.raises(CrossLibraryError, match=rf"^{library}: expected an ELF shared object for AARCH64, "
                                                r"got DYN for X86_64$"):
        check_cross_library(library, parse_arch("aarch64"))


def test_elf_check_names_a_symbol_nothing_provides(tmp_path):
    from ember.targets import zig

    source = tmp_path / "lib.c"
    source.write_text("int not_in_tvm(int);\n__attribute__((weak)) void* __TVMBackendParallelLaunch = 0;\n"
                      "const char __tvm_ffi__library_bin[1] = {0};\nint entry(int x) { return not_in_tvm(x); }\n")
    library = tmp_path / "lib.so"
    zig.link_shared(str(library), [str(source)], zig.LINUX_AARCH64_TARGET)
    with pytest.raises(CrossLibraryError, match=rf"^{library}: 1 undefined symbols that neither glibc nor the aarch64 "
                                                r"TVM runtime wheels provide: not_in_tvm$"):
        check_cross_library(library, parse_arch("aarch64"))


@pytest.mark.skipif(not ON_X86, reason="the refusal is of an arm64 artifact on an x86-64 machine")
def test_aarch64_artifact_is_refused_here_in_one_line(builds):
    path = builds["q0f32", "cpu:aarch64"]
    name = read_manifest(path).name
    with pytest.raises(ArtifactError) as err:
        ember.load(path)
    assert str(err.value) == (f"artifact {name} was built for cpu (aarch64, armv8-a), an aarch64 host; this machine "
                              f"is x86_64 (run it on a Linux arm64 machine, or compile it for this one with --target cpu)")


# -- under qemu ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qemu_results(builds, tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """Both aarch64 artifacts run by one arm64 python under qemu (aarch64_probe.py)."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the aarch64 artifacts are not run under qemu")
    tool = sysroot_tool()
    if shutil.which(tool.QEMU) is None:
        pytest.fail(f"{tool.QEMU} not found: install qemu-user ({tool.INSTALL_HINT}), or set {SKIP_ENV}=1 to skip "
                    f"running the cpu:aarch64 artifacts", pytrace=False)
    sysroot = tool.ensure_sysroot()
    out = tmp_path_factory.mktemp("qemu") / "results.npz"
    artifacts = [str(builds[quant, "cpu:aarch64"]) for quant in QUANTS]
    done = sysroot.run([str(PROBE), str(out), ",".join(map(str, PROMPT)), str(MAX_TOKENS), *artifacts],
                       capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the probe failed under qemu:\n{done.stderr[-3000:]}"
    data = np.load(out)
    common = {k: data[k] for k in ("machine", "runtime_only", "compiler_modules")}
    return {quant: {"logits": data[f"logits_{i}"], "tokens": data[f"tokens_{i}"], "hook": data[f"hook_{i}"], **common}
            for i, quant in enumerate(QUANTS)}


@pytest.mark.parametrize("quant", QUANTS)
def test_aarch64_logits_and_tokens_match_this_machine(builds, qemu_results, quant):
    got = qemu_results[quant]
    assert str(got["machine"]) == "aarch64" and int(got["runtime_only"]) == 1 and str(got["compiler_modules"]) == ""
    assert int(got["hook"]) == 1, "TVM's runtime did not fill __TVMBackendParallelLaunch in the arm64 library"
    engine = ember.load(builds[quant, "cpu"])
    want = engine.score(PROMPT)
    tokens = engine.generate(PROMPT, max_tokens=MAX_TOKENS).token_ids
    assert got["logits"].shape == want.shape == (len(PROMPT), read_manifest(builds[quant, "cpu"]).vocab_size)
    # same float32 arithmetic, other vector widths and FMA contraction: differences of a few float32 ulps
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5 * scale)
    assert got["tokens"].tolist() == tokens


def test_sysroot_names_the_install_command_without_qemu(monkeypatch):
    tool = sysroot_tool()
    monkeypatch.setattr(tool.shutil, "which", lambda _name: None)
    with pytest.raises(SystemExit, match=r"^aarch64_sysroot: qemu-aarch64 not found: install qemu-user "
                                         r"\(apt-get install -y qemu-user\)$"):
        tool.ensure_sysroot(Path("/nonexistent-ember-sysroot"))


def test_sysroot_build_is_idempotent():
    """A second ensure_sysroot is a stamp check (no apt, no pip): what CI and every test session after the first
    pay."""
    tool = sysroot_tool()
    if os.environ.get(SKIP_ENV) == "1" or shutil.which(tool.QEMU) is None:
        pytest.skip("no qemu here (the qemu tests above say so)")
    first = tool.ensure_sysroot(quiet=True)
    stamp = (first.path / "stamp.json").stat().st_mtime_ns
    again = tool.ensure_sysroot(quiet=True)
    assert again.path == first.path and (again.path / "stamp.json").stat().st_mtime_ns == stamp
    done = subprocess.run(again.command(["-c", "import platform; print(platform.machine())"]), env=again.env(),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "aarch64"
