"""Every lowering of ember's ops, and every quantized scheme, built for metal in one module (no KV cache, so a few
seconds): each kernel passes the MSL syntax check and Metal's limits. Prefill forms (a symbolic token count marked
as a prefill dim) and decode forms (one static row) of the linear layers, float16 and bfloat16 compute."""
from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest

from ember.passes.quant_schemes import SCHEMES

QUANTIZED = [name for name, s in SCHEMES.items() if s.quantized]
H, N = 64, 96  # hidden size (K) and output features


def _quant_pieces(scheme: str, rows: int, cols: int) -> dict[str, tuple[list[int], str]]:
    fmt = SCHEMES[scheme].format
    types = fmt.piece_types(rows, cols)
    return {name: (list(t.shape), t.dtype) for name, t in zip(fmt.piece_names, types, strict=True)}


def op_cases(dtype: str) -> dict[str, tuple[str, dict[str, Any], dict[str, tuple[list[Any], str]]]]:
    """function name -> (op, attrs, {input: (shape, dtype)}); `pos` inputs feed the rope's positions."""
    x = ([1, "n", H], dtype)
    cases: dict[str, tuple[str, dict[str, Any], dict[str, tuple[list[Any], str]]]] = {
        "linear_prefill": ("linear", {}, {"x": x, "w": ([N, H], dtype), "b": ([N], dtype)}),
        "linear_decode": ("linear", {}, {"x": ([1, 1, H], dtype), "w": ([N, H], dtype)}),
        "matmul": ("matmul", {}, {"a": ([1, "n", 16], dtype), "b": ([1, 16, 24], dtype)}),
        "rms_norm": ("rms_norm", {"eps": 1e-5}, {"x": x, "w": ([H], dtype)}),
        "add_rms_norm": ("add_rms_norm", {"eps": 1e-5}, {"a": x, "b": x, "w": ([H], dtype)}),
        "layer_norm": ("layer_norm", {"eps": 1e-5}, {"x": x, "w": ([H], dtype), "b": ([H], dtype)}),
        "silu": ("silu", {}, {"x": x}),
        "gelu": ("gelu", {"approximate": "none"}, {"x": x}),
        "gelu_tanh": ("gelu", {"approximate": "tanh"}, {"x": x}),
        "swiglu": ("swiglu", {}, {"x": ([1, "n", 2 * H], dtype)}),
        "softmax": ("softmax", {"axis": -1}, {"x": x}),
        "add": ("add", {}, {"a": x, "b": x}),
        "mul": ("mul", {}, {"a": x, "b": x}),
        "cast": ("cast", {"dtype": "float32"}, {"x": x}),
        "transpose": ("transpose", {"axes": [0, 2, 1]}, {"x": x}),
        "concat": ("concat", {"axis": 2}, {"a": x, "b": x}),
        "embedding": ("embedding", {"dtype": dtype}, {"ids": ([1, "n"], "int32"), "w": ([300, H], dtype)}),
        "gather_tokens": ("gather_tokens", {}, {"x": x, "idx": (["m"], "int32")}),
        "rope": ("rope", {"theta": 10000.0, "rotary_dim": 16, "scaling": None},
                 {"x": ([1, "n", 4, 16], dtype), "pos": (["n"], "int32")}),
    }
    for scheme in QUANTIZED:
        pieces = _quant_pieces(scheme, N, H)
        attrs = {"scheme": scheme, **SCHEMES[scheme].format.attrs(), "in_features": H}
        cases[f"{scheme}_prefill"] = ("quant_linear", attrs, {"x": x, **pieces})
        cases[f"{scheme}_decode"] = ("quant_linear", attrs, {"x": ([1, 1, H], dtype), **pieces, "b": ([N], dtype)})
        cases[f"{scheme}_embedding"] = ("quant_embedding", {**attrs, "dtype": dtype},
                                        {"ids": ([1, "n"], "int32"), **_quant_pieces(scheme, 300, H)})
    return cases


def export_ops(dtype: str):
    """One Relax module with a function per case, each applying ember's lowering of its op."""
    from tvm.relax.frontend import nn

    from ember.ir.graph import Node
    from ember.targets.gpu_schedule import PREFILL_DIMS_ATTR
    from ember.targets.lower import LOWERINGS

    methods, spec = {}, {}
    for name, (op, attrs, specs) in op_cases(dtype).items():
        node = Node(op, [], dict(attrs))

        def method(self, *args, node=node, op=op, names=list(specs)):
            tensors = [a for n, a in zip(names, args) if n != "pos"]
            positions = dict(zip(names, args)).get("pos")
            it = SimpleNamespace(dequant_stage=True, positions=lambda total, p=positions: p)
            out = LOWERINGS[op](it, node, tensors)
            return tuple(out) if isinstance(out, list) else out

        params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("self", *specs)]
        method.__signature__ = inspect.Signature(params)
        methods[name] = method
        spec[name] = {n: nn.spec.Tensor(list(shape), dt) for n, (shape, dt) in specs.items()}
        spec[name]["$"] = {"param_mode": "none", "effect_mode": "none"}
    model = type("Ops", (nn.Module,), methods)()
    mod, _ = model.export_tvm(spec=spec)
    return mod.with_attr(PREFILL_DIMS_ATTR, ["n"])


@pytest.fixture(scope="module", params=["float16", "bfloat16"])
def built(request):
    from ember.targets.metal.pipeline import build_metal

    return request.param, build_metal(export_ops(request.param))


def test_every_op_and_scheme_builds_for_metal(built):
    from ember.targets.metal.build import msl_kernels
    from ember.targets.metal.limits import msl_limits
    from ember.targets.metal.msl_check import check_msl

    dtype, executable = built
    assert set(op_cases(dtype)) <= {line[1:-1] for line in executable.as_text().splitlines()
                                    if line.startswith("@") and line.endswith(":")}
    kernels = msl_kernels(executable)
    for scheme in QUANTIZED:  # each scheme's dequantizing kernels (their names keep the scheme)
        assert any(n.startswith(f"{scheme}_linear") or f"_{scheme}_linear" in n for n in kernels), scheme
        assert any(f"{scheme}_embedding" in n for n in kernels), scheme
    report = check_msl(kernels)
    assert report.ok, report.summary()
    assert not msl_limits(kernels).problems(32768)
    simdgroup = [n for n, t in kernels.items() if "simdgroup_multiply_accumulate" in t]
    if dtype == "float16":  # the prefill linear layers: float weights and every quantized scheme
        assert len(simdgroup) >= 1 + len(QUANTIZED), sorted(simdgroup)
    else:  # simdgroup matrices take half here; bfloat16 stays on the SIMT schedules (TVM stores it as ushort)
        assert not simdgroup and "bfloat" not in "".join(kernels.values())


class _Stage:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def wait(self, message: str):
        import contextlib

        self.messages.append(message)
        return contextlib.nullcontext()


def _build_library(built, tmp_path, monkeypatch, edit=None):
    """targets.metal.build.build_metal_library on the prebuilt executable, its MSL edited by `edit`."""
    from ember.targets.metal import build as metal_build
    from ember.targets.metal import pipeline

    dtype, executable = built
    monkeypatch.setattr(pipeline, "build_metal", lambda mod: executable)
    if edit is not None:
        original = metal_build.msl_kernels
        monkeypatch.setattr(metal_build, "msl_kernels", lambda ex: edit(dict(original(ex))))
    stage = _Stage()
    info = metal_build.build_metal_library(None, tmp_path / "model.dylib", stage)
    return info, stage


def test_build_links_and_checks_a_dylib(built, tmp_path, monkeypatch):
    from ember.targets.metal.build import msl_kernels

    info, stage = _build_library(built, tmp_path, monkeypatch)
    assert (info.kind, info.archs, info.host) == ("metal", ["apple-m1"], "arm64-apple-macos")
    assert info.checks["msl_kernels"] == len(msl_kernels(built[1])) and info.checks["macho"] == "pass"
    assert (tmp_path / "model.dylib").read_bytes()[:4] == bytes.fromhex("cffaedfe")  # MH_MAGIC_64, little-endian
    assert any("Mach-O arm64" in m for m in stage.messages)


def _misspell_a_builtin(kernels: dict[str, str]) -> dict[str, str]:
    name = next(n for n, text in kernels.items() if "threadgroup_barrier(" in text)
    return {**kernels, name: kernels[name].replace("threadgroup_barrier(", "tg_barrier(", 1)}


def _add_a_64k_threadgroup_array(kernels: dict[str, str]) -> dict[str, str]:
    text = ("#include <metal_stdlib>\nusing namespace metal;\n"
            "kernel void big_kernel(device float* out [[ buffer(0) ]]) {\n"
            "  threadgroup float scratch[16384];\n  out[0] = scratch[0];\n}\n")
    return {**kernels, "big_kernel": text}


@pytest.mark.parametrize("edit, message", [
    (_misspell_a_builtin, "Metal kernels fail the MSL syntax check (first: "),
    (_add_a_64k_threadgroup_array, "Metal kernel(s) exceed Metal's limits (first: kernel big_kernel: 65536 bytes of "
                                   "threadgroup memory, metal allows 32768)"),
])
def test_build_fails_in_one_line_when_a_kernel_would_not_compile(built, tmp_path, monkeypatch, edit, message):
    from ember.targets.metal import MetalBuildError

    with pytest.raises(MetalBuildError) as err:
        _build_library(built, tmp_path, monkeypatch, edit)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "model.dylib").exists()


def test_build_without_the_macos_wheels_succeeds_with_a_note(built, tmp_path, monkeypatch):
    from ember.targets.metal import macos_wheels

    def offline(download: bool = True):
        raise macos_wheels.MacosWheelsUnavailable("pip download apache-tvm==0.27.0.post1 failed: no network")

    monkeypatch.setattr(macos_wheels, "runtime_exports", offline)
    info, _ = _build_library(built, tmp_path, monkeypatch)
    assert info.checks["macho"] == "skipped: pip download apache-tvm==0.27.0.post1 failed: no network"
    assert (tmp_path / "model.dylib").is_file()


def test_wheel_cache_without_download_names_what_is_missing(tmp_path, monkeypatch):
    from ember.targets.metal import macos_wheels

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    wanted = ", ".join(f"{d}=={v}" for d, v in macos_wheels.pinned_versions().items())
    assert "apache-tvm==" in wanted and "apache-tvm-ffi==" in wanted
    with pytest.raises(macos_wheels.MacosWheelsUnavailable) as err:
        macos_wheels.ensure_wheels(download=False)
    assert str(err.value) == f"not in {tmp_path / 'ember' / 'macos-wheels'}: {wanted}"
