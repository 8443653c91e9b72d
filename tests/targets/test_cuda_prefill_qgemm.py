"""ember's prefill GEMMs for quantized weights (targets/cuda/prefill_qgemm.py; kernels/prefill_qgemm.cuh, mma.sync;
kernels/prefill_qgemm_sm90.cuh + .cu, wgmma), no GPU needed: the lane / k mapping of the mma.sync fragments and the
natural order of the wgmma weight tile simulated in numpy, the 128-byte swizzle, which linears take which kernel
per build, and that nvcc compiles both (no spills; the object exports its function). The numbers are checked on a
GPU against torch (tools/qgemm_check.py) and inside whole models against the cpu build (tools/gemv_parity.py,
`ember verify`)."""
from __future__ import annotations

import re
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from cuda_lowered import calls_by_function
from test_cuda_lowbatch import CONFIG, HEAD, LAYERS

QWEN2 = {**CONFIG, "model_type": "qwen2"}  # qkv bias


# -- the fragments ---------------------------------------------------------------------------------------------------
def _pairs(v: list[int]) -> list[tuple[int, int]]:
    """lowbatch.cuh's pair order of 8 values: {v0,v4}, {v1,v5}, {v2,v6}, {v3,v7}."""
    return [(v[i], v[i + 4]) for i in range(4)]


def _mma_tile_products(t: int, q8: bool) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Per mma step of a 32-k tile, lane t's (a0a1, b0b1) and (a4a5, b2b3) as physical k pairs (prefill_qgemm.cuh:
    x chunk at 8t, in pair order for 4-bit; B from word t (4-bit: the dequantizer's {n0,n4}, {n1,n5}, {n2,n6},
    {n3,n7}) or words 2t, 2t+1 (8-bit: {c0,c1}, {c2,c3} each))."""
    k = list(range(8 * t, 8 * t + 8))
    a = [(k[2 * i], k[2 * i + 1]) for i in range(4)] if q8 else _pairs(k)  # the 4 registers of the 16-byte chunk
    b = [(k[2 * i], k[2 * i + 1]) for i in range(4)] if q8 else _pairs(k)
    out = []
    for s in range(2):  # step s: a0a1 = a[2s] with b[2s], a4a5 = a[2s+1] with b[2s+1]
        out.append(((a[2 * s], b[2 * s]), (a[2 * s + 1], b[2 * s + 1])))
    return out


@pytest.mark.parametrize("q8", [False, True])
def test_mma_fragments_pair_each_k_of_the_tile_once(q8):
    """A and B hold the same physical k in every slot, and the 4 lanes of a quad cover the 32-k tile once, so the
    tile's mma sum is x . w over it."""
    used = []
    for t in range(4):
        for step in _mma_tile_products(t, q8):
            for a, b in step:
                assert a == b
                used += list(a)
    assert sorted(used) == list(range(32))
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(32), rng.standard_normal(32)
    total = sum(x[i] * w[i] for t in range(4) for step in _mma_tile_products(t, q8) for a, _ in step for i in a)
    assert np.isclose(total, x @ w)


def _byte_perm(a: int, b: int, selector: int) -> int:
    data = a.to_bytes(4, "little") + b.to_bytes(4, "little")
    return int.from_bytes(bytes(data[(selector >> (4 * i)) & 7] for i in range(4)), "little")


def test_wgmma_weight_chunk_is_in_natural_order():
    """dequant8<Q4>'s byte_perms turn the pair-ordered half2s {n0,n4}, {n1,n5}, {n2,n6}, {n3,n7} into n0..n7."""
    halves = list(range(100, 108))  # stand-ins for the 16-bit values of n0..n7
    pairs = [lo | (hi << 16) for lo, hi in _pairs(halves)]
    out = [_byte_perm(pairs[0], pairs[1], 0x5410), _byte_perm(pairs[2], pairs[3], 0x5410),
           _byte_perm(pairs[0], pairs[1], 0x7632), _byte_perm(pairs[2], pairs[3], 0x7632)]
    assert [v for word in out for v in (word & 0xFFFF, word >> 16)] == halves


def test_swizzle_is_a_bijection_and_conflict_free():
    """The 128-byte swizzle (chunk c of row r at chunk c ^ (r % 8)) keeps each row's bytes in its row, and the
    16-byte stores of 8 consecutive items (a quarter warp: one row's 8 chunks) and the reads of one chunk column of
    8 consecutive rows (what a wgmma k-step takes) land on 8 different 16-byte bank groups."""
    offset = lambda r, c: r * 128 + ((c ^ (r % 8)) << 4)  # noqa: E731  (prefill_qgemm_sm90.cuh's swizzled())
    slots = {offset(r, c) for r in range(64) for c in range(8)}
    assert slots == set(range(0, 64 * 128, 16))
    for r in range(16):
        assert len({offset(r, c) // 16 % 8 for c in range(8)}) == 8
    for c in range(8):
        assert len({offset(r, c) // 16 % 8 for r in range(8)}) == 8


# -- the lowering ----------------------------------------------------------------------------------------------------
def _lowered(config: dict, scheme: str, spec: str = "cuda:sm_90", dtype: str = "float16"):
    from ember.frontend.config import ModelConfig
    from ember.frontend.models import build_module
    from ember.passes.manager import PassManager, default_pipeline
    from ember.targets.cuda import CudaTarget
    from ember.targets.lower import lower

    module = PassManager(default_pipeline(scheme)).run(
        build_module(ModelConfig.from_dict(config), "tiny", dtype=dtype, static_decode=True))
    relax_mod, _ = lower(module, CudaTarget.parse(spec))
    return relax_mod


def _packed_calls(relax_mod, function: str) -> list[str]:
    return re.findall(r'R\.call_dps_packed\("(ember_prefill_qgemm_[a-z0-9_]+)"', relax_mod[function].script())


@pytest.mark.parametrize("scheme,name", [("q4f16", "q4_g32"), ("q4f16_1", "q4min_g32"), ("q4f16g128", "q4_g128"),
                                         ("q8f16", "q8_g32")])
def test_sm90_prefill_linears_take_the_wgmma_gemm(scheme, name):
    relax_mod = _lowered(CONFIG, scheme)
    assert _packed_calls(relax_mod, "prefill") == [f"ember_prefill_qgemm_{name}"] * 4 + ["ember_prefill_qgemm_q8_g32"]
    for decode in ("decode1", "decode"):
        assert _packed_calls(relax_mod, decode) == []
    assert calls_by_function(relax_mod, "ember::qgemm")["prefill"] == []


def _shape(name: str) -> tuple[int, int]:
    args = name[name.index("<") + 1:name.index(">")].split(",")
    return int(args[1]), int(args[2])


def test_other_builds_keep_dlight_unless_the_mma_gemm_is_asked_for(monkeypatch):
    """sm_80 + sm_90: dlight's schedule by default (the mma.sync kernel loses to it from 512 tokens on, measured);
    with EMBER_CUDA_QGEMM=mma every prefill linear on the mma.sync kernel, the layers that fill both tiles with
    both."""
    from ember.targets.cuda import prefill_qgemm as pq

    stock = _lowered(CONFIG, "q4f16", "cuda:sm_80,sm_90")
    assert _packed_calls(stock, "prefill") == [] and calls_by_function(stock, "ember::qgemm")["prefill"] == []
    monkeypatch.setenv(pq.ENV, "mma")
    relax_mod = _lowered(CONFIG, "q4f16", "cuda:sm_80,sm_90")
    assert _packed_calls(relax_mod, "prefill") == []
    calls = calls_by_function(relax_mod, "ember::qgemm")
    assert calls["decode1"] == [] and calls["decode"] == []
    by_shape: dict[tuple[int, int], list[str]] = {}
    for name in calls["prefill"]:
        by_shape.setdefault(_shape(name), []).append(name)
    assert set(by_shape) == LAYERS | {HEAD}
    for shape, names in by_shape.items():
        tiles = [pq.LARGE, pq.SMALL] if shape[0] % pq.LARGE.bn == 0 else [pq.SMALL]
        assert sorted(names) == sorted(pq.kernel_name(2 if shape == HEAD else 0, *shape, 32, 0, c) for c in tiles)


def test_switches(monkeypatch):
    from ember.targets.cuda import prefill_qgemm as pq

    monkeypatch.setenv(pq.ENV, "mma")
    relax_mod = _lowered(CONFIG, "q4f16")
    assert _packed_calls(relax_mod, "prefill") == []
    assert len(calls_by_function(relax_mod, "ember::qgemm")["prefill"]) > 0
    for env in (pq.ENV, "EMBER_CUDA_GEMV"):
        monkeypatch.setenv(pq.ENV, "1")
        monkeypatch.setenv(env, "0")
        relax_mod = _lowered(CONFIG, "q4f16")
        assert _packed_calls(relax_mod, "prefill") == []
        assert calls_by_function(relax_mod, "ember::qgemm")["prefill"] == []
        monkeypatch.delenv(env)


def test_bias_is_added_after_the_wgmma_gemm_and_fp16_weights_are_not_taken():
    relax_mod = _lowered(QWEN2, "q4f16_1")
    script = relax_mod["prefill"].script()
    assert re.search(r"R\.call_dps_packed\(\"ember_prefill_qgemm_q4min_g32\"[^\n]*\n[^\n]*R\.add\(", script)
    assert _packed_calls(_lowered(CONFIG, "q0f16"), "prefill") == []
    assert _packed_calls(_lowered(CONFIG, "q4f16", dtype="float32"), "prefill") == []


def _node(bits: int, group: int, has_min: bool, cols: int) -> SimpleNamespace:
    return SimpleNamespace(attrs={"scheme": "s", "bits": bits, "group_size": group, "has_min": has_min,
                                  "in_features": cols})


def test_plan_refuses_what_the_kernels_do_not_take():
    import tvm

    from ember.targets.cuda import prefill_qgemm as pq
    from ember.targets.cuda.extern_kernel import FLOAT_BIAS

    n = tvm.tirx.Var("total_len", "int64")
    module = SimpleNamespace(functions={"prefill": SimpleNamespace(
        inputs=[SimpleNamespace(type=SimpleNamespace(shape=(1, "total_len")))])})
    prefill = SimpleNamespace(symbols={"total_len": n}, module=module)

    def args(rows: int, cols: int, dtype: str = "float16", bias: str | None = None) -> list:
        out = [SimpleNamespace(shape=[1, n, cols], dtype=dtype), SimpleNamespace(shape=[rows, cols // 8]),
               SimpleNamespace(shape=[rows, cols // 32])]
        return out + ([SimpleNamespace(shape=[rows], dtype=bias)] if bias else [])

    taken = pq.plan(prefill, _node(4, 32, False, 4096), args(4096, 4096))
    assert taken is not None and taken[0] == (pq.Q4, 4096, 4096, 32, pq.NO_BIAS) and taken[1] == [pq.LARGE, pq.SMALL]
    assert pq.plan(prefill, _node(4, 32, False, 4096), args(320, 4096))[1] == [pq.SMALL]
    assert pq.plan(prefill, _node(4, 32, False, 96), args(64, 96, bias="float32"))[0][4] == FLOAT_BIAS
    for why, (node, a) in {"group 16": (_node(4, 16, False, 4096), args(64, 4096)),
                           "K not whole k-tiles": (_node(4, 32, False, 4112), args(64, 4112)),
                           "N not whole tiles": (_node(4, 32, False, 4096), args(96, 4096)),
                           "fp32 x": (_node(4, 32, False, 4096), args(64, 4096, "float32")),
                           "bf16 bias": (_node(4, 32, False, 4096), args(64, 4096, bias="bfloat16"))}.items():
        assert pq.plan(prefill, node, a) is None, why
    decode = SimpleNamespace(symbols={}, module=module)
    assert pq.plan(decode, _node(4, 32, False, 4096), [SimpleNamespace(shape=[1, 1, 4096], dtype="float16")]
                   + args(64, 4096)[1:]) is None  # decode1


def test_small_tile_runs_until_the_large_grid_fills_the_gpu():
    from ember.targets.cuda import prefill_qgemm as pq

    both = [pq.LARGE, pq.SMALL]
    assert pq.small_below(4096, both) == 512  # 32 large blocks per 128 tokens: 4 x 128 tokens reach 120
    assert pq.small_below(28672, both) == 128  # 224 per 128 tokens: large from the first full tile
    assert pq.small_below(320, [pq.SMALL]) == 0


# -- nvcc ------------------------------------------------------------------------------------------------------------
MMA_WRAPPER = """
#include "prefill_qgemm.cuh"
extern "C" __global__ void __launch_bounds__({threads}) kern(int m, const void* x, const void* w, const void* s,
    const void* mn, const void* bias, void* y) {{ ember::qgemm::run<{args}>(m, x, w, s, mn, bias, y); }}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("args", ["0, 4096, 4096, 32, 0, 128, 128, 2, 4, 4", "1, 6144, 4096, 32, 1, 64, 64, 2, 2, 4",
                                  "2, 4096, 14336, 32, 2, 128, 128, 2, 4, 4", "0, 4096, 4096, 128, 0, 64, 64, 2, 2, 4"])
def test_mma_kernel_compiles_without_spills(tmp_path, args):
    from ember.targets.cuda.device_code import KERNEL_DIR

    parts = [int(a) for a in args.split(",")]
    src = tmp_path / "k.cu"
    src.write_text(MMA_WRAPPER.format(threads=32 * parts[7] * parts[8], args=args))
    result = subprocess.run(["nvcc", "-arch=sm_90", "-O3", "-std=c++17", f"-I{KERNEL_DIR}", "--cubin", "-Xptxas", "-v",
                             str(src), "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"0 bytes spill stores, 0 bytes spill loads", result.stderr), result.stderr


def test_wgmma_object_command_and_key(tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    from ember.targets.cuda import prefill_qgemm as pq

    spec = pq.QObjectSpec(pq.Q4_MIN, 32)
    cmd = spec.command("nvcc", tmp_path / "in.cu", tmp_path / "out.o")
    assert cmd[cmd.index("-gencode") + 1] == "arch=compute_90a,code=sm_90a" and cmd.count("-gencode") == 1
    assert "-DEMBER_QGEMM_SCHEME=1" in cmd and "-DEMBER_QGEMM_NAME=ember_prefill_qgemm_q4min_g32" in cmd
    text = spec.source_text()
    assert '#include "' not in text and "namespace qgemm90" in text and "namespace lowbatch" in text  # inlined
    assert spec.key("nvcc") != pq.QObjectSpec(pq.Q4, 32).key("nvcc") != pq.QObjectSpec(pq.Q4, 128).key("nvcc")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_wgmma_object_exports_its_function_and_holds_only_sm90a(tmp_path, monkeypatch):
    from ember.targets.cuda import prefill_qgemm as pq
    from ember.targets.cuda.library_check import inspect_cuda_library

    job = pq.PrefillQGemm(["sm_90"])
    job.used.add((pq.Q8, 32))
    (obj,) = job.start_objects().result()  # the kernel cache (a few seconds of nvcc the first time)
    report = inspect_cuda_library(obj)
    assert report.cubin_archs == ["sm_90a"] or report.cubin_archs == ["sm_90"], report.cubin_archs
    assert not report.has_ptx
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    assert re.search(r" T __tvm_ffi_ember_prefill_qgemm_q8_g32$", symbols, re.MULTILINE)
    assert not re.search(r" u ", symbols)  # no process-wide unique symbols shared with another model's library
