"""CUDA build toolchain (no GPU needed): target specs, stub driver, multi-arch nvcc, library checks.

The two library builds run in subprocesses, because loading the stub driver (or not) must happen
before `import tvm`, and started together to share the 2 cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.targets.cuda import CudaToolchainError
from ember.targets.cuda.library_check import check_cuda_library, inspect_cuda_library
from ember.targets.cuda.nvcc import DEFAULT_ARCHS, compile_fatbin, parse_cuda_target
from ember.targets.cuda.stub_driver import build_stub_driver

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA 13 toolkit)")

# A tiny LLM-shaped model: fp16 linears with fp32 accumulation, rms_norm, prefill over a symbolic
# `total_len`, decode over a symbolic `batch`. prefill's `up` has static dims > 64, so dlight can
# use tensor cores there (only if prefill kernels get the Matmul-first rules).
BUILD_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.modules["torch"] = None  # tvm_ffi would import it: seconds of start-up for nothing
    mode, out, hidden, inter, vocab = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    if mode == "stub":
        from ember.targets.cuda.stub_driver import prepare_cuda_compile_process
        prepare_cuda_compile_process()
    import tvm
    from tvm.relax.frontend import nn
    import ember.targets.cuda.nvcc as nvcc

    sources = []
    compile_fatbin = nvcc.compile_fatbin
    def spy(code, archs, stats=None):
        sources.append(code)
        return compile_fatbin(code, archs, stats)
    nvcc.compile_fatbin = spy

    class Tiny(nn.Module):
        def __init__(self):
            self.emb = nn.Embedding(vocab, hidden, dtype="float16")
            self.norm = nn.RMSNorm(hidden, axes=-1, bias=False, dtype="float16")
            self.up = nn.Linear(hidden, inter, bias=False, dtype="float16", out_dtype="float32")
            self.head = nn.Linear(inter, vocab, bias=False, dtype="float16", out_dtype="float32")
        def logits(self, ids):
            return self.head(nn.op.silu(self.up(self.norm(self.emb(ids))).astype("float16")))
        def prefill(self, ids):
            return self.logits(ids)
        def decode(self, ids):
            return self.logits(ids)

    packed = {"param_mode": "packed", "effect_mode": "none"}
    spec = {"prefill": {"ids": nn.spec.Tensor([1, "total_len"], "int32"), "$": packed},
            "decode": {"ids": nn.spec.Tensor(["batch", 1], "int32"), "$": packed}}
    mod, _ = Tiny().export_tvm(spec=spec)
    mod = mod.with_attr("ember_prefill_dims", ["total_len"])  # what targets.lower records
    if mode == "stub":
        from ember.targets.cuda.pipeline import build_cuda
        ex = build_cuda(mod, ["sm_80", "sm_90"])
    else:
        target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
        with target:
            ex = tvm.compile(mod, target=target)
    ex.export_library(out)
    src = "".join(sources)
    print(json.dumps({"cuda_enabled": tvm.runtime.enabled("cuda"), "hook_calls": len(sources),
                      "kernels": src.count("__global__"), "wmma_mma": src.count("wmma::mma_sync")}))
''')


@dataclass
class Built:
    path: Path
    info: dict


@pytest.fixture(scope="session")
def built_libraries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """`stub`: build_cuda with the stub driver; `plain`: stock tvm.compile, no driver, no stub."""
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc (CUDA 13 toolkit)")
    root = tmp_path_factory.mktemp("cuda_build")
    script = root / "build_tiny.py"
    script.write_text(BUILD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH", "TVM_CUDA_COMPILE_MODE")}
    jobs = {
        "stub": ("128", "128", "64", {**env, "XDG_CACHE_HOME": str(root / "cache")}),
        "plain": ("64", "64", "64", env),  # no static dim > 64: skips the slow tensor-core schedule
    }
    procs = {
        mode: subprocess.Popen([sys.executable, str(script), mode, str(root / f"{mode}.so"), h, f, v],
                               env=job_env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for mode, (h, f, v, job_env) in jobs.items()
    }
    built = {}
    for mode, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{mode} build failed:\n{err[-3000:]}"
        built[mode] = Built(root / f"{mode}.so", json.loads(out.strip().splitlines()[-1]))
    return built


# --- target specs -------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "archs"), [
    ("cuda", ["sm_80", "sm_90"]),
    ("cuda:sm_90", ["sm_90"]),
    ("cuda:sm_80,sm_90", ["sm_80", "sm_90"]),
    ("cuda:sm_90,sm_80", ["sm_80", "sm_90"]),
    ("cuda:sm_120, sm_90a", ["sm_90a", "sm_120"]),
])
def test_parse_cuda_target(spec: str, archs: list[str]) -> None:
    assert parse_cuda_target(spec) == archs
    assert list(DEFAULT_ARCHS) == parse_cuda_target("cuda")


@pytest.mark.parametrize("spec", ["", "cpu", "cuda:", "cuda:90", "cuda:sm_70", "cuda:sm_80,,sm_90",
                                  "cuda:sm_80,sm_80", "cuda:compute_90", "metal:sm_90", "cuda:sm_9x"])
def test_parse_cuda_target_rejects(spec: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_cuda_target(spec)
    message = str(err.value)
    assert "\n" not in message and repr(spec) in message


# --- stub driver --------------------------------------------------------------------------------

def test_stub_covers_the_driver_symbols_tvm_needs(tmp_path: Path) -> None:
    if shutil.which("nm") is None:
        pytest.skip("needs nm")
    import importlib.util

    tvm_dir = Path(importlib.util.find_spec("tvm").origin).parent
    needed = subprocess.run(["nm", "-D", "--undefined-only", str(tvm_dir / "lib" / "libtvm_runtime_cuda.so")],
                            capture_output=True, text=True, check=True).stdout
    needed_syms = {line.split()[-1] for line in needed.splitlines() if line.split()[-1].startswith("cu")
                   and not line.split()[-1].startswith("cuda")}
    stub = build_stub_driver(tmp_path)
    assert stub.name == "libcuda.so.1" and build_stub_driver(tmp_path) == stub  # cached
    assert not list(stub.parent.glob(".libcuda-*"))  # no temp file left behind
    defined = subprocess.run(["nm", "-D", "--defined-only", str(stub)], capture_output=True, text=True,
                             check=True).stdout
    defined_syms = {line.split()[-1] for line in defined.splitlines()}
    assert len(needed_syms) >= 9 and needed_syms <= defined_syms, needed_syms - defined_syms
    soname = subprocess.run(["readelf", "-d", str(stub)], capture_output=True, text=True).stdout
    assert "[libcuda.so.1]" in soname


def test_prepare_without_nvcc_fails_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ember.targets.cuda.stub_driver import prepare_cuda_compile_process

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvrtc")
    with pytest.raises(CudaToolchainError, match=r"^nvcc not found on PATH: ember needs the CUDA 13 toolkit"):
        prepare_cuda_compile_process()
    assert os.environ["TVM_CUDA_COMPILE_MODE"] == "nvcc"


@needs_nvcc
def test_prepare_after_import_tvm_fails() -> None:
    code = ("import sys\nsys.modules['torch'] = None\nimport tvm\nfrom ember.targets.cuda.stub_driver import prepare_cuda_compile_process\n"
            "if tvm.runtime.enabled('cuda'): print('DRIVER')\nelse: prepare_cuda_compile_process()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "DRIVER" in proc.stdout:
        pytest.skip("a real CUDA driver is present")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ember.targets.cuda.CudaToolchainError: tvm was imported without its CUDA runtime")


# --- nvcc hook ----------------------------------------------------------------------------------

@needs_nvcc
def test_nvcc_failure_names_kept_source_and_first_error() -> None:
    bad = 'extern "C" __global__ void k(float* a) { a[0] = undefined_name; }\n'
    with pytest.raises(CudaToolchainError) as err:
        compile_fatbin(bad, ["sm_80", "sm_90"])
    message = str(err.value)
    assert "\n" not in message and "nvcc failed for sm_" in message and "undefined_name" in message
    kept = Path(message.split(" on ", 1)[1].split(" (kept)", 1)[0])
    assert kept.read_text() == bad
    shutil.rmtree(kept.parent)


@needs_nvcc
def test_a_fatbin_comes_from_the_kernel_cache_the_second_time(tmp_path: Path, monkeypatch) -> None:
    """The same source and archs: the cached fatbin, byte for byte, without running nvcc; another source or arch
    list compiles again."""
    from ember.targets.cuda import nvcc

    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    code = 'extern "C" __global__ void k(float* a) { a[threadIdx.x] *= 2.0f; }\n'
    first = compile_fatbin(code, ["sm_90"])
    assert len(list((tmp_path / "kernels").glob("tvm-kernels-*.fatbin"))) == 1

    def no_nvcc(*args, **kwargs):
        raise AssertionError("nvcc ran for a cached fatbin")

    with monkeypatch.context() as patch:
        patch.setattr(nvcc.subprocess, "Popen", no_nvcc)
        stats = nvcc.CompileStats()
        assert compile_fatbin(code, ["sm_90"], stats) == first
        assert stats.calls == 1 and stats.fatbin_bytes == [len(first)]
    assert compile_fatbin(code, ["sm_80", "sm_90"]) != first
    compile_fatbin(code.replace("2.0f", "3.0f"), ["sm_90"])
    assert len(list((tmp_path / "kernels").glob("tvm-kernels-*.fatbin"))) == 3


@needs_nvcc
def test_multi_arch_compile_restores_previous_hook(tmp_path: Path) -> None:
    import tvm  # noqa: F401  (registers TVM's own hook, which must survive this test)
    import tvm_ffi

    from ember.targets.cuda.nvcc import HOOK_NAME, multi_arch_compile

    def before(code: str) -> bytearray:
        return bytearray(b"previous")

    stock = tvm_ffi.get_global_func(HOOK_NAME)
    tvm_ffi.register_global_func(HOOK_NAME, before, override=True)
    try:
        with multi_arch_compile(["sm_80", "sm_90"]) as stats:
            fatbin = bytes(tvm_ffi.get_global_func(HOOK_NAME)('extern "C" __global__ void k(int* a) { a[0] = 1; }'))
        assert bytes(tvm_ffi.get_global_func(HOOK_NAME)("")) == b"previous"
    finally:
        tvm_ffi.register_global_func(HOOK_NAME, stock, override=True)
    assert stats.calls == 1 and stats.fatbin_bytes == [len(fatbin)]
    (tmp_path / "k.fatbin").write_bytes(fatbin)
    report = inspect_cuda_library(tmp_path / "k.fatbin")
    assert report.fatbins == 1 and report.cubin_archs == ["sm_80", "sm_90"] and not report.has_ptx


# --- per-function dlight rules ------------------------------------------------------------------

def test_prefill_kernels_are_told_apart_by_shape_vars() -> None:
    from tvm import te, tirx

    from ember.targets.gpu_schedule import is_prefill_kernel, symbolic_dims

    def kernel(rows: tirx.Var, name: str = "x") -> tirx.PrimFunc:
        x = te.placeholder((1, rows, 64), "float16", name=name)
        y = te.compute(x.shape, lambda a, b, c: x[a, b, c] * 2, name="y")
        return te.create_prim_func([x, y])

    total_len, batch = tirx.Var("total_len", "int64"), tirx.Var("batch", "int64")
    assert symbolic_dims(kernel(total_len)) == {"total_len"}
    assert is_prefill_kernel(kernel(total_len), ("total_len",))
    assert not is_prefill_kernel(kernel(batch), ("total_len",))
    # The name only appears as text (a buffer name), not as a shape variable: not a prefill kernel.
    assert "total_len" in kernel(batch, name="total_len_x").script()
    assert not is_prefill_kernel(kernel(batch, name="total_len_x"), ("total_len",))
    assert is_prefill_kernel(kernel(batch), ("batch",))


# --- built libraries ----------------------------------------------------------------------------

def test_stub_build_holds_cubins_for_both_archs(built_libraries: dict[str, Built]) -> None:
    built = built_libraries["stub"]
    assert built.info["cuda_enabled"] and built.info["hook_calls"] == 1
    assert built.info["kernels"] > 0
    assert built.info["wmma_mma"] > 0  # prefill matmul got dlight Matmul (tensor cores)
    report = check_cuda_library(built.path, ["sm_80", "sm_90"])
    assert report.fatbins == 1
    assert sorted(report.cubin_archs) == ["sm_80", "sm_90"]
    assert report.global_sources == 0 and not report.has_ptx
    stubs = list((built.path.parent / "cache" / "ember" / "stubcuda").glob("*/libcuda.so.1"))
    assert len(stubs) == 1
    with pytest.raises(CudaToolchainError, match=r"lacks cubins for sm_100 \(found: sm_80, sm_90\)"):
        check_cuda_library(built.path, ["sm_90", "sm_100"])


def test_plain_build_without_driver_is_rejected(built_libraries: dict[str, Built]) -> None:
    built = built_libraries["plain"]
    if built.info["cuda_enabled"]:
        pytest.skip("a real CUDA driver is present: the plain build compiles kernels too")
    report = inspect_cuda_library(built.path)
    assert report.fatbins == 0 and report.cubin_archs == [] and report.global_sources > 0
    with pytest.raises(CudaToolchainError) as err:
        check_cuda_library(built.path, ["sm_90"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"library {built.path} holds CUDA source instead of compiled kernels")
