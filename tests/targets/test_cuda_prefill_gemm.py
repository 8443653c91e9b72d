"""ember's 16-bit prefill GEMMs for cuda (targets/cuda/prefill_gemm.py, kernels/prefill_gemm.cu: ember's wgmma kernel
for sm_90, CUTLASS 2 for sm_80), no GPU needed: which linears take them, the nvcc command and cache key, and the
compiled object (each arch its own kernel: wgmma only in the sm_90a cubin; no CUTLASS in an sm_90-only build). The numbers are checked on a GPU against torch (tools/prefill_gemm_check.py) and
inside whole models against the cpu build (`ember verify`, tools/gemv_parity.py)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cuda_lowered import lowered

LLAMA = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
         "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
QWEN2 = {**LLAMA, "model_type": "qwen2"}  # qkv bias


def _needs_cutlass() -> None:
    from ember.targets.cuda import prefill_gemm

    if prefill_gemm.cutlass_root() is None:
        pytest.skip("nvidia-cutlass is not installed (README's test command installs it)")


def _dps_calls(relax_mod) -> dict[str, list[str]]:
    """Relax function -> the packed functions its call_dps_packed's name, in order."""
    from tvm import relax

    out: dict[str, list[str]] = {}
    for gv, func in relax_mod.functions_items():
        if isinstance(func, relax.Function):
            out[gv.name_hint] = re.findall(r'R\.call_dps_packed\("(ember_prefill_gemm_[a-z0-9]+)"', func.script())
    return out


@pytest.mark.parametrize("dtype,name", [("float16", "ember_prefill_gemm_f16"), ("bfloat16", "ember_prefill_gemm_bf16")])
def test_prefill_linears_take_the_gemm_and_decode_ones_do_not(dtype, name, monkeypatch):
    monkeypatch.setenv("EMBER_CUTLASS_DIR", "/nonexistent")  # ember's sm_90 kernel needs no CUTLASS headers
    monkeypatch.setenv("EMBER_CUDA_GEMM", "ember")
    calls = _dps_calls(lowered(LLAMA, "q0f16" if dtype == "float16" else "q0bf16", dtype))
    assert calls["prefill"] == [name] * 4 + [name]  # qkv, o, gate_up, down, LM head (the last token)
    for decode in ("decode1", "decode"):
        assert calls[decode] == []


def test_bias_is_added_after_the_gemm():
    relax_mod = lowered(QWEN2, "q0f16")
    assert _dps_calls(relax_mod)["prefill"] == ["ember_prefill_gemm_f16"] * 5
    script = relax_mod["prefill"].script()
    assert re.search(r"R\.call_dps_packed\(\"ember_prefill_gemm_f16\"[^\n]*\n[^\n]*R\.add\(", script)


def test_quantized_and_off_switch_keep_dlight(monkeypatch):
    from ember.targets.cuda import prefill_gemm

    assert _dps_calls(lowered(LLAMA, "q4f16"))["prefill"] == []  # 4-bit: prefill_qgemm.py's kernels
    monkeypatch.setenv(prefill_gemm.ENV, "0")
    assert _dps_calls(lowered(LLAMA, "q0f16"))["prefill"] == []


def test_only_sm80_code_needs_the_cutlass_headers(monkeypatch):
    from ember.targets.cuda import prefill_gemm

    monkeypatch.setattr(prefill_gemm, "cutlass_root", lambda: None)
    monkeypatch.delenv(prefill_gemm.ENV, raising=False)
    assert prefill_gemm.enabled(["sm_90"]) and not prefill_gemm.enabled(["sm_80", "sm_90"])  # ember's by default
    assert not prefill_gemm.enabled(["sm_100"])
    monkeypatch.setenv(prefill_gemm.ENV, "cutlass")
    assert not prefill_gemm.enabled(["sm_90"])  # CUTLASS 3 asked for, not installed


def test_nvcc_command_keeps_hopper_code_in_sm90a(tmp_path):
    from ember.targets.cuda.prefill_gemm import ObjectSpec

    spec = ObjectSpec("float16", ("sm_80", "sm_90"), tmp_path)
    cmd = spec.command("nvcc", Path("in.cu"), Path("out.o"))
    assert cmd[cmd.index("-gencode") + 1] == "arch=compute_80,code=sm_80"
    assert "arch=compute_90a,code=sm_90a" in cmd
    assert "-DEMBER_GEMM_SM80=1" in cmd and "-DEMBER_GEMM_SM90=1" in cmd and "-DNDEBUG" in cmd
    assert f"-I{tmp_path / 'include'}" in cmd and "-DEMBER_GEMM_CUTLASS90=1" not in cmd
    only90 = ObjectSpec("bfloat16", ("sm_90",), None).command("nvcc", Path("in.cu"), Path("out.o"))
    assert "-DEMBER_GEMM_SM80=0" in only90 and "-DEMBER_GEMM_BF16=1" in only90
    assert "-DEMBER_GEMM_NAME=ember_prefill_gemm_bf16" in only90
    assert not any("cutlass" in part for part in only90)
    forced = ObjectSpec("float16", ("sm_90",), tmp_path, cutlass90=True).command("nvcc", Path("in.cu"), Path("o"))
    assert "-DEMBER_GEMM_CUTLASS90=1" in forced


def test_cache_key_follows_dtype_archs_and_source(tmp_path, monkeypatch):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    from ember.targets.cuda import prefill_gemm
    from ember.targets.cuda.prefill_gemm import ObjectSpec

    a = ObjectSpec("float16", ("sm_80", "sm_90"), tmp_path).key("nvcc")
    assert a == ObjectSpec("float16", ("sm_80", "sm_90"), tmp_path / "elsewhere").key("nvcc")  # not the path
    assert a != ObjectSpec("bfloat16", ("sm_80", "sm_90"), tmp_path).key("nvcc")
    assert a != ObjectSpec("float16", ("sm_90",), tmp_path).key("nvcc")
    edited = tmp_path / "edited.cu"
    edited.write_text(prefill_gemm.SOURCE.read_text() + "\n// edited\n")
    monkeypatch.setattr(prefill_gemm, "SOURCE", edited)
    assert a != ObjectSpec("float16", ("sm_80", "sm_90"), tmp_path).key("nvcc")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_sm90_object_is_embers_kernel_without_cutlass(monkeypatch, tmp_path):
    """An sm_90-only build compiles ember's TMA + wgmma kernel alone (seconds of nvcc, no CUTLASS headers): one
    sm_90a cubin, the packed function exported; its PTX has wgmma and TMA loads, and ptxas spills nothing."""
    from ember.targets.cuda import prefill_gemm
    from ember.targets.cuda.library_check import inspect_cuda_library

    monkeypatch.setenv("EMBER_CUTLASS_DIR", "/nonexistent")
    monkeypatch.setenv(prefill_gemm.ENV, "ember")
    job = prefill_gemm.PrefillGemm(["sm_90"])
    job.dtypes.update(("float16", "bfloat16"))
    for obj, suffix in zip(job.start_objects().result(), ("bf16", "f16")):
        report = inspect_cuda_library(obj)
        assert report.cubin_archs == ["sm_90"] and not report.has_ptx and not report.global_sources
        symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
        assert re.search(rf" T __tvm_ffi_ember_prefill_gemm_{suffix}$", symbols, re.MULTILINE)
    spec = prefill_gemm.ObjectSpec("bfloat16", ("sm_90",), None)
    source = tmp_path / "gemm.cu"
    source.write_text(spec.source_text())
    cmd = spec.command(shutil.which("nvcc"), source, tmp_path / "gemm.ptx")
    cmd[cmd.index("-c")] = "-ptx"
    subprocess.run(cmd, check=True, capture_output=True)
    ptx = (tmp_path / "gemm.ptx").read_text()
    assert "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16" in ptx and "cp.async.bulk.tensor.2d" in ptx
    ptxas = subprocess.run(["ptxas", "-arch=sm_90a", "-v", "-o", str(tmp_path / "gemm.cubin"), str(tmp_path / "gemm.ptx")],
                           capture_output=True, text=True, check=True)
    spills = re.findall(r"(\d+) bytes spill stores", ptxas.stdout + ptxas.stderr)
    assert spills and all(n == "0" for n in spills)


def test_sm90_source_includes_no_cutlass_unless_forced():
    from ember.targets.cuda.prefill_gemm import ObjectSpec

    text = ObjectSpec("float16", ("sm_90",), None).source_text()
    assert '#include "' not in text  # ember's headers inlined: the cache folder compiles it on its own
    assert "gemm90::run" in text


def test_object_holds_a_cubin_per_arch_and_exports_the_function():
    """ptxas itself refuses wgmma for sm_80 (so an sm_80 cubin cannot hold Hopper instructions); this checks that
    both cubins are there and the packed function is exported. The sm_80 path runs on the H200 through PTX JIT in
    tools/prefill_gemm_check.py."""
    _needs_cutlass()
    if shutil.which("nvcc") is None:
        pytest.skip("CUDA toolkit not installed")
    from ember.targets.cuda import prefill_gemm
    from ember.targets.cuda.library_check import inspect_cuda_library

    job = prefill_gemm.PrefillGemm(["sm_80", "sm_90"])
    job.dtypes.add("float16")
    (obj,) = job.start_objects().result()  # the kernel cache: compiled once per machine (~1 min on 2 cores)
    report = inspect_cuda_library(obj)
    assert sorted(report.cubin_archs) == ["sm_80", "sm_90"] and not report.has_ptx and not report.global_sources
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    assert re.search(r" T __tvm_ffi_ember_prefill_gemm_f16$", symbols, re.MULTILINE)


class _TinySpec:
    """An ObjectBuild spec of one small kernel (the cache's mechanics, without CUTLASS's minute of nvcc)."""
    stem = "tiny"

    def source_text(self) -> str:  # an anonymous namespace: nvcc names it after a hash of the source's path
        return 'namespace { __global__ void tiny(float* a) { a[threadIdx.x] += 1.0f; } }\n' \
               'void launch(float* a) { tiny<<<1, 32>>>(a); }\n'

    def command(self, nvcc: str, source: Path, output: Path) -> list[str]:
        return [nvcc, "-O3", "-c", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_90,code=sm_90", "-o", str(output),
                str(source)]

    def key(self, nvcc: str) -> str:
        return "0" * 24


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_a_cached_object_does_not_depend_on_where_the_cache_is(tmp_path, monkeypatch):
    """The object records its source's path: compiled from inside the cache folder, two caches give the same
    bytes (a library built on another machine, or with XDG_CACHE_HOME set, is byte-identical)."""
    from ember.targets.cuda.prefill_gemm import ObjectBuild

    objects = []
    for where in ("one", "elsewhere/two"):
        monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / where))
        [path] = ObjectBuild([_TinySpec()]).result()
        assert path.is_relative_to(tmp_path / where) and path.is_file()
        objects.append(path.read_bytes())
    assert objects[0] == objects[1]
