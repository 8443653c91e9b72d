"""ember's cuda kernels for the GGUF formats kept native (kernels/kgemv.cuh at decode1, klowbatch.cuh in the batched
decode), no GPU needed: the kernels' bit manipulation simulated in numpy against gguf's codes, the benchmark's
torch dequantization against gguf.quants.dequantize, where the lowerings take a quant_linear and where they leave it,
and that nvcc compiles them without spills. The kernels' numbers are checked on a GPU by tools/kgemv_bench.py and
tools/gemv_parity.py (build-gguf)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from cuda_lowered import calls_by_function

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "quant"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from model_fixtures import llama_config, random_kquant_blocks  # noqa: E402

SCHEME_OF = {"Q5_0": "q5f16", "Q5_1": "q5f16_1", "Q4_K": "q4_k", "Q5_K": "q5_k", "Q6_K": "q6_k"}
CODE_OF = {"Q5_0": 5, "Q5_1": 6, "Q4_K": 7, "Q5_K": 8, "Q6_K": 9}  # kgemv.cuh's Format
BIAS_OF = {"Q5_0": 16, "Q5_1": 16, "Q4_K": 8, "Q5_K": 16, "Q6_K": 32}  # Fmt::kBias: the kernels' q - c
VS_OF = BIAS_OF  # kgemv's fp16 value = (q - c) / VS


def _raw(ggml_type: str, rows: int, cols: int, seed: int) -> np.ndarray:
    qtype = getattr(Q, ggml_type)
    if ggml_type in ("Q5_0", "Q5_1"):
        w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) * 0.05
        return gguf.quants.quantize(w, qtype)
    return random_kquant_blocks((rows, cols), qtype, seed)


def _packed(ggml_type: str, rows: int = 6, cols: int = 512, seed: int = 3):
    from ember.passes.quant_kblocks import from_kblocks

    raw = _raw(ggml_type, rows, cols, seed)
    return raw, from_kblocks(raw, ggml_type, cols)


# -- the benchmark's reference ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ggml_type", sorted(SCHEME_OF))
def test_bench_dequant_matches_gguf(ggml_type):
    """tools/kgemv_bench.py's torch_dequant (what the GPU checks compare against) gives gguf's values."""
    torch = pytest.importorskip("torch")
    import kgemv_bench

    from ember.passes.quant_schemes import SCHEMES

    fmt = SCHEMES[SCHEME_OF[ggml_type]].format
    raw, packed = _packed(ggml_type)
    theirs = gguf.quants.dequantize(raw, getattr(Q, ggml_type)).astype(np.float64)
    pieces = [torch.from_numpy(np.ascontiguousarray(packed.piece(n))) for n in fmt.piece_names]
    ours = kgemv_bench.torch_dequant(torch, fmt, pieces, 512).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2e-7, atol=1e-7 * np.abs(theirs).max())


def test_bench_random_pieces_fit_the_format():
    torch = pytest.importorskip("torch")
    import kgemv_bench

    from ember.passes.quant_schemes import SCHEMES

    gen = torch.Generator().manual_seed(0)
    for scheme in SCHEME_OF.values():
        fmt = SCHEMES[scheme].format
        pieces = kgemv_bench.random_pieces(torch, fmt, 8, 512, gen, device="cpu")
        types = fmt.piece_types(8, 512)
        assert [tuple(p.shape) for p in pieces] == [tuple(t.shape) for t in types]
        assert [str(p.dtype).replace("torch.", "") for p in pieces] == [t.dtype for t in types]
        assert torch.isfinite(kgemv_bench.torch_dequant(torch, fmt, pieces, 512)).all()


# -- the kernels' bit manipulation, simulated ------------------------------------------------------------------------
U32 = np.uint64(0xFFFFFFFF)


def _byte_perm(a: np.ndarray, b: np.ndarray, sel: int) -> np.ndarray:
    """PRMT (default mode): result byte i = byte (sel >> 4i) & 7 of {b, a}."""
    src = [(a >> np.uint64(8 * i)) & np.uint64(255) for i in range(4)]
    src += [(b >> np.uint64(8 * i)) & np.uint64(255) for i in range(4)]
    out = np.zeros_like(a)
    for i in range(4):
        out |= src[(sel >> (4 * i)) & 7] << np.uint64(8 * i)
    return out


def _spread_high(ggml_type: str, hi: list[np.ndarray], j: int) -> np.ndarray:
    """kgemv.cuh's spread_high."""
    if ggml_type == "Q6_K":
        b = 2 * (j & 1)
        return _byte_perm(hi[j >> 1], np.zeros_like(hi[0]), b | (4 << 4) | ((b + 1) << 8) | (4 << 12))
    return _byte_perm(hi[0], hi[0] >> np.uint64(4), j | (4 << 4) | ((4 + j) << 8) | (4 << 12))


def _word_bits(ggml_type: str, w: np.ndarray, H: np.ndarray) -> list[np.ndarray]:
    """kgemv.cuh's word_bits: the bits of half 1024 + q ([0], [2]) or 1024 + 16 q ([1], [3]) for pairs t = 0..3."""
    magic = np.uint64(0x64006400)
    w8 = w >> np.uint64(8)
    b = [(w & np.uint64(0x000F000F)) | magic, (w & np.uint64(0x00F000F0)) | magic,
         (w8 & np.uint64(0x000F000F)) | magic, (w8 & np.uint64(0x00F000F0)) | magic]
    if ggml_type == "Q6_K":
        shifts, masks = (4, 6, 0, 2), (0x00300030, 0x03000300) * 2
    elif ggml_type != "Q4_K":
        shifts, masks = (4, 7, 2, 5), (0x00100010, 0x01000100) * 2
    else:
        return b
    return [bits | (((H << np.uint64(s)) & U32) & np.uint64(m)) for bits, s, m in zip(b, shifts, masks)]


def _halves(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = (bits & np.uint64(0xFFFF)).astype(np.uint16).view(np.float16)
    hi = (bits >> np.uint64(16)).astype(np.uint16).view(np.float16)
    return lo, hi


def _kernel_codes(ggml_type: str, packed, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (row, k): the code kgemv's HFMA2 makes, times VS plus the bias (= q if exact), and klowbatch's exact
    q - bias (HADD2 / HFMA2), both in fp16 as the kernel computes them (each step exact, so one rounding is all)."""
    words = packed.qweight.astype(np.uint64).reshape(rows, cols // 32, 4)
    high = None if packed.qhigh is None else packed.qhigh.astype(np.uint64)
    per = 2 if ggml_type == "Q6_K" else 1
    bias, vs = BIAS_OF[ggml_type], VS_OF[ggml_type]
    f16 = np.float16
    gemv = np.zeros((rows, cols // 32, 32))
    exact = np.zeros_like(gemv)
    for j in range(4):
        hi = [] if high is None else [high.reshape(rows, cols // 32, per)[..., i] for i in range(per)]
        H = _spread_high(ggml_type, hi, j) if hi else np.zeros_like(words[..., 0])
        for t, bits in enumerate(_word_bits(ggml_type, words[..., j], H)):
            lo, hi16 = _halves(bits)
            for k_off, half in ((8 * j + t, lo), (8 * j + t + 4, hi16)):
                h = half.astype(np.float64)
                if t % 2 == 0:  # lo position: 1024 + q
                    v = f16(h / vs - (1024 + bias) / vs)
                    e = f16(h - (1024 + bias))
                else:  # hi position: 1024 + 16 q
                    v = f16(h / (16 * vs) - (64 + bias) / vs)
                    e = f16(h / 16 - (64 + bias))
                gemv[..., k_off] = v.astype(np.float64) * vs + bias
                exact[..., k_off] = e.astype(np.float64) + bias
    return gemv.reshape(rows, cols), exact.reshape(rows, cols)


@pytest.mark.parametrize("ggml_type", sorted(SCHEME_OF))
def test_kernel_dequant_gives_gguf_codes(ggml_type):
    """The codes the kernels compute from the planar pieces (nibble pairs, high bits spread by PRMT, fp16 magic
    constants) are gguf's own codes of the file's blocks (ember.passes.quant_kblocks.block_codes), every k."""
    from ember.passes.quant_kblocks import BLOCK_BYTES, block_codes

    rows, cols = 6, 512
    raw, packed = _packed(ggml_type, rows, cols)
    size, _ = BLOCK_BYTES[ggml_type]
    codes = block_codes(raw.reshape(rows, -1, size), ggml_type).astype(np.float64)
    gemv, exact = _kernel_codes(ggml_type, packed, rows, cols)
    np.testing.assert_array_equal(gemv, codes)
    np.testing.assert_array_equal(exact, codes)


def _slot_scales(ggml_type: str, packed, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """kgemv.cuh's slot_scales per (row, k), in float32 as the kernel: W = s (q - c) + m."""
    f32 = np.float32
    group = np.arange(cols) // (16 if ggml_type == "Q6_K" else 32)
    c = f32(BIAS_OF[ggml_type])
    if ggml_type in ("Q5_0", "Q5_1"):
        s = packed.scales.astype(f32)[:, group]
        m = c * s + packed.mins.astype(f32)[:, group] if ggml_type == "Q5_1" else np.zeros_like(s)
        return s, m
    sup = packed.super.astype(f32)[:, np.arange(cols) // 256]
    s = sup * packed.scales.astype(f32)[:, group]
    if ggml_type == "Q6_K":
        return s, np.zeros_like(s)
    return s, c * s - packed.super_mins.astype(f32)[:, np.arange(cols) // 256] * packed.mins.astype(f32)[:, group]


@pytest.mark.parametrize("ggml_type", sorted(SCHEME_OF))
def test_kernel_scales_give_gguf_values(ggml_type):
    """s (q - c) + m with the kernels' centred codes and min terms is gguf's dequantized weight."""
    from ember.passes.quant_kblocks import BLOCK_BYTES, block_codes

    rows, cols = 6, 512
    raw, packed = _packed(ggml_type, rows, cols)
    codes = block_codes(raw.reshape(rows, -1, BLOCK_BYTES[ggml_type][0]), ggml_type).astype(np.float64)
    s, m = _slot_scales(ggml_type, packed, cols)
    ours = s.astype(np.float64) * (codes - BIAS_OF[ggml_type]) + m.astype(np.float64)
    theirs = gguf.quants.dequantize(raw, getattr(Q, ggml_type)).astype(np.float64)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max())


def test_kernel_value_scales_keep_codes_in_range():
    """(q - bias) / VS lies in [-1, 1] for every code of every format (fp16 partial sums over 16 codes stay in range
    for activations as large as gemv.cuh's)."""
    for ggml_type, vs in VS_OF.items():
        top = {"Q5_0": 31, "Q5_1": 31, "Q4_K": 15, "Q5_K": 31, "Q6_K": 63}[ggml_type]
        values = (np.arange(top + 1) - BIAS_OF[ggml_type]) / vs
        assert values.min() >= -1 and values.max() <= 1, ggml_type


# -- the lowering ----------------------------------------------------------------------------------------------------
TYPES = {".q_proj.": "Q4_K", ".k_proj.": "Q4_K", ".v_proj.": "Q6_K", ".o_proj.": "Q5_0", ".gate_proj.": "Q4_K",
         ".up_proj.": "Q4_K", ".down_proj.": "Q5_K", "lm_head": "Q6_K", "embed_tokens": "Q4_K"}


def _lowered_kquant(monkeypatch=None, env: dict | None = None):
    from ember.frontend.config import ModelConfig
    from ember.frontend.models import build_module
    from ember.passes.manager import PassManager, default_pipeline
    from ember.passes.quantize import SourceFormats
    from ember.targets.cuda import CudaTarget
    from ember.targets.lower import lower

    config = llama_config(hidden_size=256, intermediate_size=512, num_hidden_layers=1, head_dim=64,
                          vocab_size=320).to_dict()
    module = build_module(ModelConfig.from_dict(config), "tiny", dtype="float16", static_decode=True)
    names = [n for n in module.params if n.endswith(".weight") and module.params[n].type.ndim == 2]
    types = {n: next(t for key, t in TYPES.items() if key in n) for n in names}
    module.attrs["source_formats"] = SourceFormats(types, keep_native=True)
    module = PassManager(default_pipeline("q4_k")).run(module)
    relax_mod, _ = lower(module, CudaTarget.parse("cuda:sm_90"))
    return relax_mod


def _args_of(name: str) -> list[int]:
    return [int(a) for a in name[name.index("<") + 1:name.index(">")].split(",")]


def test_decode_linears_take_the_kernels():
    """decode1's linears (q, k, v, o, gate_up, down, head) run kgemv.cuh, the down projection staging
    silu(gate) * up itself; the batched decode's run klowbatch.cuh; prefill neither."""
    relax_mod = _lowered_kquant()
    kgemv = calls_by_function(relax_mod, "ember::kgemv")
    klow = calls_by_function(relax_mod, "ember::klowbatch")
    assert kgemv["prefill"] == [] and kgemv["decode"] == [] and klow["prefill"] == [] and klow["decode1"] == []
    expected = {(256, 256, 7), (128, 256, 7), (128, 256, 9), (256, 256, 5), (1024, 256, 7), (256, 512, 8),
                (320, 256, 9)}
    got = {(a[1], a[2], a[0]) for a in map(_args_of, kgemv["decode1"])}
    assert got == expected, kgemv["decode1"]
    assert {(a[1], a[2], a[0]) for a in map(_args_of, klow["decode"])} == expected, klow["decode"]
    down = [a for a in map(_args_of, kgemv["decode1"]) if (a[1], a[2]) == (256, 512)]
    assert len(down) == 1 and len(down[0]) == 8 and down[0][-1] == 1  # act SWIGLU
    assert all(len(a) == 7 for a in map(_args_of, kgemv["decode1"]) if (a[1], a[2]) != (256, 512))


@pytest.mark.parametrize("env,kgemv_on,klow_on", [("EMBER_CUDA_LOWBATCH", True, False),
                                                   ("EMBER_CUDA_GEMV", False, False)])
def test_off_by_environment(monkeypatch, env, kgemv_on, klow_on):
    monkeypatch.setenv(env, "0")
    relax_mod = _lowered_kquant()
    assert bool(calls_by_function(relax_mod, "ember::kgemv")["decode1"]) == kgemv_on
    assert bool(calls_by_function(relax_mod, "ember::klowbatch")["decode"]) == klow_on


def _node(scheme: str, cols: int) -> SimpleNamespace:
    from ember.passes.quant_schemes import SCHEMES

    return SimpleNamespace(attrs={"scheme": scheme, **SCHEMES[scheme].format.attrs(), "in_features": cols})


def _args(scheme: str, lead: list, rows: int, cols: int, bias: str | None = None, dtype: str = "float16"):
    from ember.passes.quant_schemes import SCHEMES

    x = SimpleNamespace(shape=[*lead, cols], dtype=dtype)
    pieces = [SimpleNamespace(shape=list(t.shape), dtype=t.dtype)
              for t in SCHEMES[scheme].format.piece_types(rows, cols)]
    return [x, *pieces] + ([SimpleNamespace(shape=[rows], dtype=bias)] if bias else [])


def test_plans_take_exactly_the_supported_cases():
    import tvm

    from ember.targets.cuda import native_kgemv as kg
    from ember.targets.cuda import native_klowbatch as klb

    batch = tvm.tirx.Var("batch", "int64")
    decode = SimpleNamespace(symbols={"batch": batch}, module=None)
    assert klb.plan(decode, _node("q4_k", 4096), _args("q4_k", [batch, 1], 6144, 4096))[0] == (7, 6144, 4096, 0)
    assert klb.plan(decode, _node("q6_k", 4096), _args("q6_k", [batch], 64, 4096, "float32"))[0][3] == 2
    assert klb.plan(decode, _node("q5f16", 1056), _args("q5f16", [batch, 1], 64, 1056))[0][0] == 5
    assert kg.plan(_node("q5_k", 14336), _args("q5_k", [1, 1], 4096, 14336))[0] == (8, 4096, 14336, 0)
    n = tvm.tirx.Var("total_len", "int64")
    prefill_module = SimpleNamespace(functions={"prefill": SimpleNamespace(
        inputs=[SimpleNamespace(type=SimpleNamespace(shape=(1, "total_len")))])})
    prefill = SimpleNamespace(symbols={"total_len": n}, module=prefill_module)
    refused = {
        "decode1 (static)": (decode, "q4_k", [1, 1], None, "float16"),
        "prefill tokens": (prefill, "q4_k", [1, n], None, "float16"),
        "two symbolic dims": (decode, "q4_k", [batch, batch], None, "float16"),
        "bf16 bias": (decode, "q4_k", [batch], "bfloat16", "float16"),
        "fp32 x": (decode, "q4_k", [batch, 1], None, "float32"),
        "4-bit q4f16 (lowbatch.cuh's)": (decode, "q4f16", [batch, 1], None, "float16"),
    }
    for why, (it, scheme, lead, bias, dtype) in refused.items():
        assert klb.plan(it, _node(scheme, 4096), _args(scheme, lead, 64, 4096, bias, dtype)) is None, why
    assert kg.plan(_node("q4_k", 4096), _args("q4_k", [batch, 1], 64, 4096)) is None
    assert kg.plan(_node("q4_k", 4096), _args("q4_k", [1, 1], 64, 4096, dtype="float32")) is None
    assert kg.plan(_node("q4_k", 32768), _args("q4_k", [1, 1], 64, 32768)) is None  # x past 48 KB of shared


# -- nvcc ------------------------------------------------------------------------------------------------------------
WRAPPER = """
#include "{header}"
extern "C" __global__ void __launch_bounds__({threads}) kern({batch}const void* x, const void* q, const void* h,
    const void* s, const void* m, const void* d, const void* dm, const void* b, {out}* y) {{
  ember::{ns}::run<{args}>({batch_arg}x, q, h, s, m, d, dm, b, y); }}
"""


def _compile(tmp_path, ns: str, args: str, threads: int) -> str:
    from ember.targets.cuda.device_code import KERNEL_DIR

    batched = ns == "klowbatch"
    src = tmp_path / "k.cu"
    src.write_text(WRAPPER.format(header=f"{ns}.cuh", threads=threads, args=args, ns=ns,
                                  batch="int nb, " if batched else "", batch_arg="nb, " if batched else "",
                                  out="void" if batched else "__half"))
    result = subprocess.run(["nvcc", "-arch=sm_90", "-O3", "-std=c++17", f"-I{KERNEL_DIR}", "--cubin", "-Xptxas",
                             "-v", str(src), "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("args", ["7, 4096, 4096, 4, 2, 4, 0", "9, 4096, 14336, 8, 2, 4, 0, 1",
                                  "8, 28672, 4096, 4, 4, 4, 1", "5, 1000, 1056, 4, 1, 8, 2",
                                  "6, 1000, 1056, 2, 2, 4, 0, 1", "9, 128256, 4096, 8, 4, 2, 0"])
def test_kgemv_compiles_without_spills(tmp_path, args):
    stderr = _compile(tmp_path, "kgemv", args, 32 * int(args.split(",")[3]))
    assert re.search(r"0 bytes spill stores, 0 bytes spill loads", stderr), stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("args", ["7, 4096, 4096, 8, 4, 1, 2, 0", "9, 4096, 14336, 4, 4, 2, 1, 0",
                                  "8, 6144, 4096, 8, 2, 1, 2, 1", "5, 1000, 1056, 4, 4, 1, 2, 2",
                                  "6, 1000, 1056, 8, 4, 1, 1, 0"])
def test_klowbatch_compiles_without_spills(tmp_path, args):
    stderr = _compile(tmp_path, "klowbatch", args, 32 * int(args.split(",")[3]))
    assert re.search(r"0 bytes spill stores, 0 bytes spill loads", stderr), stderr
