"""The metal target without a Mac: tiny Llama artifacts built for Apple GPUs, checked statically.

Two compiles per session (a random-weights float16 build, a packed q4f16_1 build) plus a cpu build of the same
model for the artifact-format comparison. Every check reads what ships: the MSL comes back out of model.dylib
(library_source), the Mach-O check reads the dylib against the macOS wheels of the pinned TVM (downloaded with
pip here, as in CI: this test does not skip when they are missing, it fails).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ember.compiler import CompileRequest, compile_model
from ember.errors import ArtifactError, ConfigError, InputError

sys.path.insert(0, str(Path(__file__).parents[1] / "quant"))
from model_fixtures import random_llama  # noqa: E402

WIDE_VECTOR = re.compile(r"\b(?:bool|u?char|u?short|u?int|u?long|half|float|bfloat)(?:[5-9]|1[0-6])\b")


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("metal") / "hf"
    random_llama(seed=3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def metal_f16(hf_dir) -> Path:
    return compile_model(CompileRequest(model=str(hf_dir), target="metal", random_weights=True,
                                        output=str(hf_dir.parent / "metal-f16")))


@pytest.fixture(scope="session")
def metal_q4(hf_dir) -> Path:
    return compile_model(CompileRequest(model=str(hf_dir), target="metal", quant="q4f16_1",
                                        output=str(hf_dir.parent / "metal-q4")))


@pytest.fixture(scope="session")
def cpu_q4(hf_dir) -> Path:
    return compile_model(CompileRequest(model=str(hf_dir), target="cpu", quant="q4f16_1",
                                        output=str(hf_dir.parent / "cpu-q4")))


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def kernels(path: Path) -> dict[str, str]:
    from ember.targets.metal.library_source import msl_from_dylib

    return msl_from_dylib(path / "model.dylib")


# -- the target ------------------------------------------------------------------------------------------------------
def test_parse_needs_no_tvm_and_takes_no_arch():
    code = ("import sys; from ember.targets.base import parse_target; t = parse_target('metal'); "
            "assert (t.name, t.default_quant, t.default_dtype, t.library_file) == "
            "('metal', 'q0f16', 'float16', 'model.dylib'); assert 'tvm' not in sys.modules, 'tvm imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from ember.compile_args import parse_target_arg

    message = "target: metal takes no arch (it means Apple M1 and later), got 'metal:m2'"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        parse_target_arg("metal:m2")


def test_tvm_target_is_apple_m1():
    from ember.targets.metal import MetalTarget

    target = MetalTarget.parse("metal").tvm_target()
    assert target.kind.name == "metal"
    assert int(target.attrs["thread_warp_size"]) == 32 and int(target.attrs["max_threads_per_block"]) == 1024
    assert str(target.host.attrs["mtriple"]) == "arm64-apple-macos"


# -- the artifacts ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", ["metal_f16", "metal_q4"])
def test_manifest_records_target_and_checks(build, request):
    path = request.getfixturevalue(build)
    m = manifest(path)
    assert m["library"] == "model.dylib" and (path / "model.dylib").is_file() and not (path / "model.so").exists()
    assert m["target"]["kind"] == "metal" and m["target"]["host"] == "arm64-apple-macos"
    assert m["target"]["archs"] == ["apple-m1"]
    checks = m["target"]["checks"]
    assert checks["msl_syntax"] == "pass" and checks["macho"] == "pass"
    assert checks["msl_kernels"] == len(kernels(path))
    assert m["compute_dtype"] == "float16" and m["quantization"] == ("q0f16" if build == "metal_f16" else "q4f16_1")
    assert {"prefill", "decode", "decode1", "create_kv"} <= set(m["functions"])
    if build == "metal_f16":
        assert m["weights"] == "random" and any(f.startswith("fill_random_") for f in m["functions"])


@pytest.mark.parametrize("build", ["metal_f16", "metal_q4"])
def test_every_shipped_kernel_passes_the_msl_check(build, request):
    from ember.targets.metal.msl_check import check_msl

    shipped = kernels(request.getfixturevalue(build))
    assert len(shipped) > 20  # the model's kernels and the paged KV cache's
    report = check_msl(shipped)
    assert report.ok, report.summary()
    assert report.kernels == len(shipped)


def test_msl_check_catches_a_misspelled_builtin(metal_f16):
    from ember.targets.metal.msl_check import check_msl

    shipped = kernels(metal_f16)
    name = next(n for n, text in shipped.items() if "threadgroup_barrier(" in text)
    broken = {**shipped, name: shipped[name].replace("threadgroup_barrier(", "threadgroup_barier(", 1)}
    report = check_msl(broken)
    assert [f.kernel for f in report.failures] == [name]
    assert "threadgroup_barier" in report.failures[0].error


@pytest.mark.parametrize("build", ["metal_f16", "metal_q4"])
def test_prefill_matmuls_use_simdgroup_matrices(build, request):
    shipped = kernels(request.getfixturevalue(build))
    simdgroup = {n for n, text in shipped.items() if "simdgroup_multiply_accumulate" in text}
    # the prefill linear layers: qkv, o, gate_up, down (fused per layer; one kernel per distinct shape)
    assert len(simdgroup) >= 4, sorted(simdgroup)
    assert all("simdgroup_float8x8" in shipped[n] for n in simdgroup)  # float32 accumulators
    assert manifest(request.getfixturevalue(build))["target"]["checks"]["simdgroup_kernels"] == len(simdgroup)


@pytest.mark.parametrize("build", ["metal_f16", "metal_q4"])
def test_no_vector_wider_than_4_and_threadgroup_memory_within_32k(build, request):
    from ember.targets.metal.limits import msl_limits

    shipped = kernels(request.getfixturevalue(build))
    assert not {n: WIDE_VECTOR.findall(t) for n, t in shipped.items() if WIDE_VECTOR.search(t)}
    assert any(re.search(r"\b(?:half|float)4\b", t) for t in shipped.values())  # the scan does see vectors
    limits = msl_limits(shipped)
    assert limits.threadgroup_bytes and limits.max_threadgroup_bytes <= 32768
    assert not limits.problems(32768)


def test_limits_scan_flags_wide_vectors_and_big_threadgroup_arrays():
    from ember.targets.metal.limits import msl_limits

    text = "kernel void k() {\n  threadgroup float a[4096];\n  threadgroup half4 b[1024];\n  half8 v;\n}\n"
    limits = msl_limits({"k": text})
    assert limits.threadgroup_bytes == {"k": 4096 * 4 + 1024 * 8}
    assert limits.wide_vectors == {"k": ["half8"]}
    assert len(limits.problems(32768)) == 1 and len(limits.problems(16384)) == 2


def test_threadgroups_within_1024_threads(hf_dir):
    """Every kernel's threadIdx extents, read from the scheduled TIR, multiply to at most 1024."""
    import tvm

    from ember.frontend.config import ModelConfig
    from ember.frontend.models import build_module
    from ember.passes.manager import PassManager, default_pipeline
    from ember.targets.lower import lower
    from ember.targets.metal import MetalTarget
    from ember.targets.metal import limits as metal_limits
    from ember.targets.metal import pipeline

    config = ModelConfig.from_dict(json.loads((hf_dir / "config.json").read_text()))
    module = PassManager(default_pipeline("q4f16_1")).run(build_module(config, "tiny", dtype="float16"))
    relax_mod, _ = lower(module, MetalTarget.parse("metal"))
    seen: dict[str, int | None] = {}
    original = metal_limits.check_threadgroups

    def spy(target):
        inner = original(target)

        def run(mod, ctx):
            for gvar, func in mod.functions_items():
                if isinstance(func, tvm.tirx.PrimFunc):
                    seen[gvar.name_hint] = metal_limits.threadgroup_size(func)
            return inner(mod)

        return tvm.transform.module_pass(run, opt_level=0, name="spy")

    target = pipeline.metal_target()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metal_limits, "check_threadgroups", spy)
        with target, tvm.transform.PassContext(opt_level=3, config=pipeline.PASS_CONFIG):
            pipeline.metal_relax_pipeline(target)(relax_mod)
    assert len(seen) > 20 and None not in seen.values()
    assert max(seen.values()) <= 1024 and max(seen.values()) >= 128


def test_macho_check_passes_against_the_macos_wheels(metal_q4):
    from ember.targets.metal.macho_check import check_dylib
    from ember.targets.metal.macos_wheels import runtime_exports

    m = manifest(metal_q4)
    exports = runtime_exports()  # downloads the wheels once (CI has the PyPI mirror); a failure fails the test
    functions = _library_functions(metal_q4)
    report = check_dylib(metal_q4 / "model.dylib", functions, exports)
    assert report.ok, report.summary()
    assert (report.cpu, report.filetype) == ("ARM64", "DYLIB")
    assert report.libraries == ["/usr/lib/libSystem.B.dylib"]
    assert report.install_name == "@rpath/model.dylib" and report.minos.startswith("13.0")
    assert "___tvm_ffi__library_bin" in report.entry_points and len(report.entry_points) == len(functions) + 2
    assert len(functions) > 20
    assert report.undefined["_TVMFFIErrorSetRaisedFromCStrParts"].startswith("apache-tvm-ffi")
    assert all(report.undefined.values()) and not report.unchecked
    assert m["target"]["checks"]["macho_undefined_symbols"] == len(report.undefined)
    assert "result: pass" in report.summary()


def _library_functions(artifact: Path) -> list[str]:
    """The host functions that launch the shipped kernels (kernel `<f>_kernel[_N]` is launched by `<f>`)."""
    from ember.targets.metal.library_source import msl_from_dylib

    return sorted({re.sub(r"_kernel(?:_\d+)?$", "", n) for n in msl_from_dylib(artifact / "model.dylib")})


def test_macho_check_reports_what_a_mac_would_not_load(metal_q4, cpu_q4, tmp_path):
    from ember.targets.metal.macho_check import check_dylib
    from ember.targets.metal.macos_wheels import RuntimeExports, runtime_exports

    elf = check_dylib(cpu_q4 / "model.so", [], None)
    assert elf.problems == ["not a single-architecture Mach-O file"]
    missing = check_dylib(metal_q4 / "model.dylib", ["no_such_kernel"], runtime_exports())
    assert missing.problems == ["1 entry point(s) not exported, e.g. ___tvm_ffi_no_such_kernel"]
    bare = check_dylib(metal_q4 / "model.dylib", [], RuntimeExports({}))  # a runtime that exports nothing
    assert bare.problems == ["undefined symbol _TVMFFIErrorSetRaisedFromCStrParts is not exported by flat lookup "
                             "(libSystem and the TVM runtime libraries)"]
    unchecked = check_dylib(metal_q4 / "model.dylib", [], None)  # no wheels: listed, not failed
    assert unchecked.ok and unchecked.unchecked == ["_TVMFFIErrorSetRaisedFromCStrParts"]


def test_tbd_parser_reads_arm64_exports():
    from ember.targets.metal.macos_wheels import libsystem_exports, tbd_exports

    exported = libsystem_exports()
    assert {"_malloc", "_memcpy", "___extendhfsf2", "___truncsfhf2", "dyld_stub_binder"} <= exported
    assert not any(s.startswith("$ld$") for s in exported)
    text = ("--- !tapi-tbd\ninstall-name: '/usr/lib/x.dylib'\nexports:\n"
            "  - targets: [ x86_64-macos ]\n    symbols: [ _only_x86 ]\n"
            "  - targets: [ x86_64-macos, arm64-macos ]\n    symbols: [ _both, '$ld$hide$os10.4$_both' ]\n"
            "    weak-symbols: [ _weak ]\nreexports:\n  - targets: [ arm64e-macos ]\n    symbols: [ _child ]\n"
            "...\n")
    assert tbd_exports(text) == {"_both", "_weak", "_child"}


def test_other_files_have_the_format_of_a_cpu_build(metal_q4, cpu_q4):
    from safetensors.numpy import load_file

    a, b = manifest(metal_q4), manifest(cpu_q4)
    assert sorted(a) == sorted(b) and a["format_version"] == b["format_version"]
    assert set(a["files"]) - {"model.dylib"} == set(b["files"]) - {"model.so"}
    params_a = {p["name"]: p for p in a["params"]}
    params_b = {p["name"]: p for p in b["params"]}
    assert list(params_a) == list(params_b)
    wa = {k: v for f in {p["file"] for p in a["params"]} for k, v in load_file(str(metal_q4 / f)).items()}
    wb = {k: v for f in {p["file"] for p in b["params"]} for k, v in load_file(str(cpu_q4 / f)).items()}
    for name, pa in params_a.items():
        pb = params_b[name]
        assert (pa["shape"], pa["scheme"]) == (pb["shape"], pb["scheme"]), name
        if pa["dtype"] == pb["dtype"]:  # the packed quantized tensors: the same bytes
            assert np.array_equal(wa[name], wb[name]), name
        else:  # float tensors kept in the compute dtype (float16 here, float32 on cpu)
            assert (pa["dtype"], pb["dtype"]) == ("float16", "float32"), name
            assert np.array_equal(wa[name], wb[name].astype(np.float16)), name


def test_msl_read_back_from_the_dylib_is_what_the_build_checked(metal_q4):
    shipped = kernels(metal_q4)
    assert all(name.endswith("_kernel") and "#include <metal_stdlib>" in text for name, text in shipped.items())
    assert any("batch_decode_paged_kv" in n for n in shipped) and any("rms_norm" in n for n in shipped)


# -- the runtime on a machine without Metal --------------------------------------------------------------------------
def test_metal_artifact_on_linux_is_one_clear_line(metal_f16):
    import ember

    name = manifest(metal_f16)["name"]
    msg = f"artifact {name} was built for metal (Apple silicon, macOS); this machine is Linux x86_64"
    for device in ("cpu", "metal"):
        with pytest.raises(ArtifactError, match=f"^{re.escape(msg)}$"):
            ember.load(metal_f16, device=device)


def test_device_metal_without_metal_is_one_clear_line(cpu_q4):
    import ember

    with pytest.raises(InputError, match=r"^device metal needs macOS on Apple silicon; this machine is Linux x86_64$"):
        ember.load(cpu_q4, device="metal")
    done = subprocess.run([sys.executable, "-c", "from ember.cli import main; main()", "run", str(cpu_q4),
                           "--prompt-ids", "1", "--device", "metal"], capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert errors == ["error: --device metal needs macOS on Apple silicon; this machine is Linux x86_64"]
