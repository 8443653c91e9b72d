"""ember's cuda GEMV (targets/cuda/native_gemv.py, kernels/gemv.cuh), no GPU needed: where the lowering takes a
quant_linear (decode1 with a supported 4-bit scheme) and where it leaves it to dlight, and that the source nvcc
compiles holds the kernel. The kernel's numbers are checked on a GPU (test_cuda_gemv_gpu.py, tools/gemv_bench.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from cuda_lowered import calls_by_function, lowered
from cuda_lowered import extern_calls as _extern_calls

CONFIG = {"model_type": "llama", "vocab_size": 320, "hidden_size": 256, "intermediate_size": 512,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 256, "tie_word_embeddings": False}
# hidden 256, head_dim 64: fused qkv (4 + 2 + 2) * 64 = 512 rows, o 256, fused gate_up 1024, down 256 from K 512
LAYERS = {(512, 256), (256, 256), (1024, 256), (256, 512)}
HEAD = (320, 256)  # the LM head: q8f16 in every scheme here


def gemv_calls(relax_mod) -> dict[str, list[str]]:
    return calls_by_function(relax_mod, "ember::gemv")


def _lowered(scheme: str, dtype: str = "float16"):
    return lowered(CONFIG, scheme, dtype)


def _shape(name: str) -> tuple[int, int]:
    args = name[name.index("<") + 1:name.index(">")].split(",")
    return int(args[1]), int(args[2])


@pytest.mark.parametrize("scheme,code,group", [("q4f16", 0, 32), ("q4f16_1", 1, 32), ("q4f16g128", 0, 128),
                                               ("q8f16", 2, 32)])
def test_decode1_linears_take_the_gemv(scheme, code, group):
    """decode1's four layers (qkv, o, gate_up, down) and its q8f16 LM head run ember's kernel; prefill and the
    symbolic-batch decode keep the generic lowering."""
    calls = gemv_calls(_lowered(scheme))
    assert calls["prefill"] == [] and calls["decode"] == []
    assert {_shape(n) for n in calls["decode1"]} == LAYERS | {HEAD} and len(calls["decode1"]) == 5
    for name in calls["decode1"]:
        layer_code, layer_group = (2, 32) if _shape(name) == HEAD else (code, group)
        assert name.startswith(f"ember::gemv::run<{layer_code}, ") and f", {layer_group}, " in name


def _down_input_width(relax_mod) -> int:
    """Width of what decode1's down-projection GEMV (256 rows from K 512) reads."""
    from tvm import relax

    prims = {gv.name_hint: f for gv, f in relax_mod.functions_items()}
    widths = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            names = _extern_calls(prims[expr.args[0].name_hint])
            if any(n.startswith("ember::gemv::run<0, 256, 512,") for n in names):
                widths.append(int(expr.args[1].fields[0].ty.shape[-1]))

    relax.analysis.post_order_visit(relax_mod["decode1"].body, visit)
    assert len(widths) == 1
    return widths[0]


def test_down_projection_computes_swiglu_while_staging(monkeypatch):
    """decode1's down GEMV reads gate_up (1024 wide) and applies SwiGLU itself (Act 1); the swiglu kernel is left
    without readers (Relax's dead-code elimination drops it). EMBER_CUDA_GEMV_SWIGLU=0 keeps it."""
    relax_mod = _lowered("q4f16")
    down = [n for n in gemv_calls(relax_mod)["decode1"] if _shape(n) == (256, 512)]
    assert down == ["ember::gemv::run<0, 256, 512, 32, 4, 2, 4, 2, 0, 0, 1>"]
    assert _down_input_width(relax_mod) == 1024
    monkeypatch.setenv("EMBER_CUDA_GEMV_SWIGLU", "0")
    relax_mod = _lowered("q4f16")
    assert [n for n in gemv_calls(relax_mod)["decode1"] if _shape(n) == (256, 512)] == [
        "ember::gemv::run<0, 256, 512, 32, 4, 2, 4, 2, 0, 0>"]
    assert _down_input_width(relax_mod) == 512


def test_gemv_off_by_environment(monkeypatch):
    monkeypatch.setenv("EMBER_CUDA_GEMV", "0")
    assert all(calls == [] for calls in gemv_calls(_lowered("q4f16")).values())


@pytest.mark.parametrize("scheme,dtype", [("q4f16", "float32"), ("q0f16", "float16")])
def test_other_dtypes_and_schemes_fall_back(scheme, dtype):
    """fp32 activations (cuda --dtype float32) and float weights: dlight's kernels, as before."""
    assert all(calls == [] for calls in gemv_calls(_lowered(scheme, dtype)).values())


def _node(bits: int, group: int, has_min: bool, cols: int) -> SimpleNamespace:
    return SimpleNamespace(attrs={"scheme": "s", "bits": bits, "group_size": group, "has_min": has_min,
                                  "in_features": cols})


def _args(lead: list, rows: int, cols: int, pieces: int = 2, bias: str | None = None) -> list:
    x = SimpleNamespace(shape=[*lead, cols], dtype="float16")
    weight = SimpleNamespace(shape=[rows, -(-cols // 8)], dtype="uint32")
    scales = SimpleNamespace(shape=[rows, -(-cols // 32)], dtype="float16")
    out = [x, weight] + [scales] * (pieces - 1)
    return out + ([SimpleNamespace(shape=[rows], dtype=bias)] if bias else [])


def test_plan_takes_exactly_the_supported_cases():
    import tvm

    from ember.targets.cuda import native_gemv as g

    taken = g.plan(_node(4, 32, False, 4096), _args([1, 1], 6144, 4096))
    assert taken is not None and taken[0] == (g.Q4, 6144, 4096, 32, g.NO_BIAS)
    assert g.plan(_node(4, 32, True, 4096), _args([1, 1], 64, 4096, pieces=3))[0][0] == g.Q4_MIN
    assert g.plan(_node(4, 32, False, 96), _args([1], 8, 96, bias="float16"))[0][4] == g.HALF_BIAS
    assert g.plan(_node(4, 32, False, 96), _args([1], 8, 96, bias="float32"))[0][4] == g.FLOAT_BIAS
    assert g.plan(_node(8, 32, False, 4096), _args([1, 1], 128256, 4096))[0][0] == g.Q8
    batch = tvm.tirx.Var("batch", "int64")
    refused = {
        "symbolic batch": (_node(4, 32, False, 4096), _args([batch, 1], 64, 4096)),
        "two rows": (_node(4, 32, False, 4096), _args([2, 1], 64, 4096)),
        "K not a multiple of 32": (_node(4, 8, False, 100), _args([1, 1], 64, 100)),
        "group 16": (_node(4, 16, False, 4096), _args([1, 1], 64, 4096)),
        "8-bit, K not a multiple of 16": (_node(8, 8, False, 200), _args([1, 1], 64, 200)),
        "x over 48 KB of shared memory": (_node(4, 32, False, 32768), _args([1, 1], 64, 32768)),
        "bfloat16 bias": (_node(4, 32, False, 96), _args([1], 8, 96, bias="bfloat16")),
    }
    for why, (node, args) in refused.items():
        assert g.plan(node, args) is None, why
    fp32 = _args([1, 1], 64, 4096)
    fp32[0] = SimpleNamespace(shape=[1, 1, 4096], dtype="float32")
    assert g.plan(_node(4, 32, False, 4096), fp32) is None


def test_configs_fit_shared_memory():
    from ember.targets.cuda import native_gemv as g

    for code in (g.Q4, g.Q4_MIN, g.Q8):
        for rows, cols in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (1000, 1056), (128256, 4096)):
            cfg = g.choose_config(code, rows, cols)
            assert g.shared_bytes(code, cols, cfg) <= g.SHARED_LIMIT
            assert cfg.blocks(rows) * cfg.warps * cfg.rows >= rows


def test_device_sources_are_prepended_only_when_called():
    from ember.targets.cuda.device_code import KERNEL_DIR, with_device_sources

    plain = 'extern "C" __global__ void k(float* a) { a[0] = 1; }'
    assert with_device_sources(plain) == plain
    calling = 'extern "C" __global__ void k(half* x) { ember::gemv::run<0, 8, 32, 32, 4, 2, 4, 2, 0, 0>(x); }'
    code = with_device_sources(calling)
    gemv = (KERNEL_DIR / "gemv.cuh").read_text()
    assert code.endswith(calling) and gemv[gemv.index("namespace ember"):] in code  # after the inlined pdl.cuh
    assert code.index("namespace pdl") < code.index("namespace gemv") < code.index(calling)


BUILD = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None
    from ember.targets.cuda.stub_driver import prepare_cuda_compile_process
    prepare_cuda_compile_process()
    import ember.targets.cuda.nvcc as nvcc
    from ember.compiler import CompileRequest, compile_model
    sources = []
    compile_fatbin = nvcc.compile_fatbin
    def spy(code, archs, stats=None):
        sources.append(code)
        return compile_fatbin(code, archs, stats)
    nvcc.compile_fatbin = spy
    compile_model(CompileRequest(model=sys.argv[1], target="cuda:sm_80,sm_90", quant="q4f16", output=sys.argv[2]))
    code = "\\n".join(sources)
    print(json.dumps({"defines": "namespace gemv" in code,
                      "calls": sorted({l.strip().split("(")[0] for l in code.splitlines()
                                       if l.strip().startswith("ember::gemv::run<")})}))
""")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA 13 toolkit)")
def test_nvcc_source_holds_the_gemv(tmp_path):
    """A q4f16 compile for sm_80 + sm_90: the source nvcc gets defines the kernel and decode1's kernels call it."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "quant"))
    from model_fixtures import random_llama

    random_llama(seed=3, hidden_size=128, intermediate_size=320).save_pretrained(tmp_path / "hf")
    (tmp_path / "build.py").write_text(BUILD)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH", "TVM_CUDA_COMPILE_MODE")}
    proc = subprocess.run([sys.executable, str(tmp_path / "build.py"), str(tmp_path / "hf"), str(tmp_path / "art")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["defines"]
    # hidden 128 (head_dim 32): qkv 256 x 128, o 128 x 128, gate_up 640 x 128, down 128 x 320, head 320 x 128
    assert {_shape(n) for n in info["calls"]} == {(256, 128), (128, 128), (640, 128), (128, 320), (320, 128)}


@pytest.mark.parametrize("scheme", ["q2_k", "q3_k", "q4_k"])
def test_kquant_decode1_takes_kgemv_except_q2_k_and_q3_k(scheme):
    """kgemv.cuh takes decode1's K-quant layers; Q2_K/Q3_K (not in kgemv.cuh) stay on the generic lowering, which
    dlight schedules, at every batch size. The LM head is q6_k in all three, so kgemv takes it."""
    calls = calls_by_function(_lowered(scheme), "ember::kgemv")
    assert calls["prefill"] == [] and calls["decode"] == []
    taken = {_shape(n) for n in calls["decode1"]}
    assert taken == (LAYERS | {HEAD} if scheme == "q4_k" else {HEAD})
