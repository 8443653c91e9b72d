"""The cuda lowering of mixture-of-experts blocks (targets/cuda/native_moe.py, kernels/moe.cuh): decode1 runs
ember::moe's per-slot kernels (route, gate_up, down), the batched decode and prefill the grouped GEMM (route, sort,
gated gate_up GEMM, down GEMM, combine; a small and a large tile chosen on the device) for each scheme; bf16 stays
per slot; what the kernels cannot take is refused in one line; nvcc compiles the grouped kernels without spills.
Numerics on a GPU: tools/gemv_parity.py (mixtral, qwen3_moe) against the cpu build."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from cuda_lowered import calls_by_function, lowered

from ember.ir.ops_moe import moe_schemes
from ember.targets.cuda import native_moe
from ember.targets.lower import LoweringError

QWEN3_MOE = {"model_type": "qwen3_moe", "vocab_size": 160, "hidden_size": 128, "intermediate_size": 192,
             "moe_intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 64, "num_experts": 8, "num_experts_per_tok": 2,
             "norm_topk_prob": True, "mlp_only_layers": [1]}


@pytest.mark.parametrize("scheme,fmt", [("q4f16", 0), ("q4f16_1", 1), ("q8f16", 2), ("q4f16g128", 0),
                                        ("q0f16", 3)])
def test_every_entry_point_routes_on_the_device(scheme, fmt):
    calls = calls_by_function(lowered(QWEN3_MOE, scheme), "ember::moe")
    # one sparse layer (layer 1 is dense). decode1: gemv.cuh's GEMV over the selected experts (4-/8-bit), the
    # grouped GEMM's small tile for fp16 experts
    assert calls["decode1"][0] == "ember::moe::route<8, 2, 1, half>"
    if fmt == 3:
        assert [c.split("<")[0].split("::")[-1] for c in calls["decode1"]][1:3] == ["sort", "gemm"]
    else:
        assert [c.split("<")[0].split("::")[-1] for c in calls["decode1"]] == ["route", "gemv_gate_up", "gemv_down",
                                                                               "combine"]
        group = 128 if scheme.endswith("g128") else 32
        assert calls["decode1"][1].startswith(f"ember::moe::gemv_gate_up<{fmt}, 128, 64, {group}, 2, ")
        assert calls["decode1"][3] == "ember::moe::combine<128, 2, half, 0>"
    for function in ("prefill", "decode"):
        # the grouped plan: both tile shapes are in the function, the device picks one per call
        assert [c.split("<")[0].split("::")[-1] for c in calls[function]] == [
            "route", "sort", "gemm", "gemm", "sort", "gemm", "gemm", "combine"], function
        gemms = [c for c in calls[function] if "::gemm<" in c]
        assert gemms[0].startswith(f"ember::moe::gemm<{fmt}, 64, 128, 1, 2, 64, 64, 2, 2, ")  # gate_up, large
        assert gemms[1].startswith(f"ember::moe::gemm<{fmt}, 128, 64, 0, 2, 64, 64, 2, 2, ")  # down, large
        assert gemms[2].startswith(f"ember::moe::gemm<{fmt}, 64, 128, 1, 2, 16, 64, 1, 4, ")  # gate_up, small
        assert calls[function][1] == "ember::moe::sort<8, 2, 64>"
        assert calls[function][-1] == "ember::moe::combine<128, 2, half>"


def test_the_per_slot_plan_stays_on_request(monkeypatch):
    monkeypatch.setenv("EMBER_CUDA_MOE", "slots")
    calls = calls_by_function(lowered(QWEN3_MOE, "q4f16"), "ember::moe")
    assert [c.split("<")[0].split("::")[-1] for c in calls["prefill"]] == ["route", "gate_up", "down"]
    assert [c.split("<")[0].split("::")[-1] for c in calls["decode1"]] == ["route", "gate_up", "down"]


def test_bf16_activations_take_the_kernel_too():
    calls = calls_by_function(lowered(QWEN3_MOE, "q4f16_1", dtype="bfloat16"), "ember::moe")
    assert calls["decode"][0].endswith("__nv_bfloat16>")
    assert [c.split("<")[0].split("::")[-1] for c in calls["prefill"]] == ["route", "gate_up", "down"]
    assert [c.split("<")[0].split("::")[-1] for c in calls["decode1"]] == ["route", "gate_up", "down"]


def _kept_native(config: dict, expert_types: tuple[str, str, str], dense_type: str = "Q8_0"):
    """The tiny model of `config` as if read from a GGUF file with no --quant: experts gate/up/down of the given
    GGUF types, every other matrix `dense_type` (K-quants cannot be made from float: only a file holds them)."""
    from ember.frontend.config import ModelConfig
    from ember.frontend.models import build_module
    from ember.passes.manager import PassManager, default_pipeline
    from ember.passes.materialize import sources_of
    from ember.passes.quantize import SourceFormats
    from ember.targets.cuda import CudaTarget
    from ember.targets.lower import lower

    module = build_module(ModelConfig.from_dict(config), "tiny", dtype="float16", static_decode=True)
    types = {}
    for name, param in module.params.items():
        which = {"gate_proj": 0, "up_proj": 1, "down_proj": 2}.get(name.split(".")[-2])
        kind = expert_types[which] if "experts" in name and which is not None else dense_type
        if param.type.ndim >= 2 and not name.endswith("mlp.gate.weight"):
            types.update((source, kind) for source in sources_of(param))
    module.attrs["source_formats"] = SourceFormats(types, keep_native=True)
    module = PassManager(default_pipeline("q8f16")).run(module)
    relax_mod, _ = lower(module, CudaTarget.parse("cuda:sm_90"))
    return module, relax_mod


KQUANT_MOE = {**QWEN3_MOE, "hidden_size": 256, "moe_intermediate_size": 256, "head_dim": 64}


@pytest.mark.parametrize("types,codes", [(("Q4_K", "Q4_K", "Q6_K"), (7, 7, 9)), (("Q5_K", "Q5_K", "Q5_K"), (8, 8, 8)),
                                         (("Q5_0", "Q5_1", "Q6_K"), (5, 6, 9))], ids=lambda v: "-".join(map(str, v)))
def test_gguf_experts_in_kgemv_formats_take_kgemv_per_slot_and_dequantized_grouped_gemms(types, codes):
    """A Q4_K_M / Q5_K_M file's experts (kgemv.cuh's formats, one per weight): decode1 runs kgemv.cuh's GEMV over
    every slot's expert (gate and up in their formats, down staging silu(gate) * up), then combine; the batched
    decode and prefill take that below DEQUANT_SLOTS_PER_EXPERT slots per expert and otherwise dequantize every
    expert to fp16 (each weight in its format) for the grouped plan's fp16 GEMMs, both tiles, sorted combine."""
    module, relax_mod = _kept_native(KQUANT_MOE, types)
    moe = [n for _, n in module.iter_nodes() if n.op == "quant_moe"]
    assert moe and all(moe_schemes(n.attrs)[2] == {"Q6_K": "q6_k", "Q5_K": "q5_k"}[types[2]] for n in moe)
    calls = calls_by_function(relax_mod, "ember::moe")
    g, u, d = codes
    per_slot = [f"ember::moe::kgemv_gate_up<{g}, {u}, 256, 256, 2, 4, 2, 4>",
                "ember::moe::kgemv_down<" + f"{d}, 256, 256, 2, 4, 2, 4>", "ember::moe::combine<256, 2, half, 0>"]
    route = "ember::moe::route<8, 2, 1, half>"
    assert calls["decode1"] == [route, *per_slot]
    for function in ("prefill", "decode"):
        assert calls[function][0] == route and calls[function][-3:] == per_slot, function
        grouped = calls[function][1:-3]
        assert grouped[:3] == [f"ember::moe::dequant<{c}, 256>" for c in codes], function
        assert [c.split("<")[0].split("::")[-1] for c in grouped[3:]] == ["sort", "gemm", "gemm", "sort", "gemm",
                                                                           "gemm", "combine"], function
        assert all(c.startswith("ember::moe::gemm<3, 256, 256, ") for c in grouped if "::gemm<" in c)  # fp16


@pytest.mark.parametrize("types,codes", [(("Q2_K", "Q3_K", "Q5_K"), (10, 11, 8)), (("Q5_0", "Q5_1", "Q8_0"), (5, 6, 2))],
                         ids=lambda v: "-".join(map(str, v)))
def test_gguf_experts_beyond_kgemv_take_the_per_weight_kernels(types, codes):
    """Experts with a format kgemv.cuh lacks (Q2_K, Q3_K) or beside a 4-/8-bit one: every entry point runs route,
    gate_up_any and down_any with each weight's format."""
    module, relax_mod = _kept_native(KQUANT_MOE, types)
    moe = [n for _, n in module.iter_nodes() if n.op == "quant_moe"]
    assert moe and all(n.attrs["weight_formats"]["down"]["scheme"] == {"Q5_K": "q5_k", "Q8_0": "q8f16"}[types[2]]
                       for n in moe)
    calls = calls_by_function(relax_mod, "ember::moe")
    for function in ("prefill", "decode1", "decode"):
        assert calls[function] == ["ember::moe::route<8, 2, 1, half>",
                                   f"ember::moe::gate_up_any<{codes[0]}, {codes[1]}, 256, 256, 2, 8, half>",
                                   f"ember::moe::down_any<{codes[2]}, 256, 256, 2, 8, half>"], function


def test_what_the_kernels_cannot_take_is_refused_in_one_line():
    odd = {**QWEN3_MOE, "moe_intermediate_size": 48}  # not a multiple of 32
    with pytest.raises(LoweringError, match="quant_moe .* has no kernel for float16 activations"):
        lowered(odd, "q4f16")


WRAPPER = """
#include "moe.cuh"
extern "C" __global__ void __launch_bounds__({threads}) kern(int bound, const void* tiles, const void* count,
    const void* rows, const void* x, const void* w0, const void* s0, const void* m0, const void* w1, const void* s1,
    const void* m1, int group, void* y) {{
  ember::moe::gemm<{args}>(bound, tiles, count, rows, x, w0, s0, m0, w1, s1, m1, group, y);
}}
extern "C" __global__ void __launch_bounds__(1024) sort(int t, const void* ids, void* rows, void* pos, void* tiles,
    void* count) {{ ember::moe::sort<128, 8, 16>(t, ids, rows, pos, tiles, count); }}
extern "C" __global__ void combine(int t, const void* pos, const void* w, const void* ys, void* y) {{
  ember::moe::combine<4096, 2, half>(t, pos, w, ys, y);
}}
extern "C" __global__ void __launch_bounds__(256) gate_up(int t, const void* x, const void* ids, const void* gw,
    const void* gs, const void* gm, const void* uw, const void* us, const void* um, void* gu) {{
  ember::moe::gemv_gate_up<1, 4096, 14336, 32, 2, 8, 2, 4, 2, 0>(t, x, ids, gw, gs, gm, uw, us, um, gu);
}}
extern "C" __global__ void __launch_bounds__(256) down(int t, const void* gu, const void* ids, const void* dw,
    const void* ds, const void* dm, void* ys) {{
  ember::moe::gemv_down<0, 4096, 14336, 32, 2, 8, 2, 4, 2, 0>(t, gu, ids, dw, ds, dm, ys);
}}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("args", [
    "0, 14336, 4096, 1, 2, 64, 64, 2, 2, 4",  # Mixtral-8x7B gate_up, q4f16, large tile
    "1, 14336, 4096, 1, 2, 16, 64, 1, 4, 4",  # q4f16_1, small tile
    "2, 768, 2048, 1, 8, 64, 64, 2, 2, 4",    # Qwen3-30B-A3B gate_up, q8f16
    "3, 768, 2048, 1, 8, 64, 64, 2, 2, 3",    # fp16 experts (a shallower ring: 48 KiB of static shared memory)
    "0, 4096, 14336, 0, 2, 64, 64, 2, 2, 4",  # Mixtral down
])
def test_grouped_kernels_compile_without_spills(tmp_path, args):
    from ember.targets.cuda.device_code import KERNEL_DIR

    threads = 32 * int(args.split(",")[7]) * int(args.split(",")[8])
    src = tmp_path / "k.cu"
    src.write_text(WRAPPER.format(threads=threads, args=args))
    result = subprocess.run(["nvcc", "-arch=sm_90", "-O3", "-std=c++17", f"-I{KERNEL_DIR}", "--cubin", "-Xptxas",
                             "-v", str(src), "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("0 bytes spill stores, 0 bytes spill loads") == 5, result.stderr


ANY_WRAPPER = """
extern "C" __global__ void __launch_bounds__(256) gate_up{fg}_{fu}(int t, const void* x, const void* ids,
    const void* g0, const void* g1, const void* g2, const void* g3, const void* g4, const void* g5, int gg,
    const void* u0, const void* u1, const void* u2, const void* u3, const void* u4, const void* u5, int ug, void* h) {{
  ember::moe::gate_up_any<{fg}, {fu}, 2048, 768, 8, 8, half>(t, x, ids, g0, g1, g2, g3, g4, g5, gg, u0, u1, u2, u3,
                                                             u4, u5, ug, h);
}}
extern "C" __global__ void __launch_bounds__(256) down{fd}(int t, const void* h, const void* ids, const void* w,
    const void* d0, const void* d1, const void* d2, const void* d3, const void* d4, const void* d5, int g, void* y) {{
  ember::moe::down_any<{fd}, 2048, 768, 8, 8, half>(t, h, ids, w, d0, d1, d2, d3, d4, d5, g, y);
}}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_per_weight_kernels_compile_for_every_format_without_spills(tmp_path):
    """gate_up_any / down_any for each of moe.cuh's formats (Qwen3-30B-A3B's shapes), one file."""
    from ember.targets.cuda.device_code import KERNEL_DIR

    formats = [(7, 7, 9), (8, 8, 6), (10, 11, 5), (0, 1, 2)]
    src = tmp_path / "k.cu"
    src.write_text('#include "moe.cuh"\n' + "".join(ANY_WRAPPER.format(fg=g, fu=u, fd=d) for g, u, d in formats))
    result = subprocess.run(["nvcc", "-arch=sm_90", "-O3", "-std=c++17", f"-I{KERNEL_DIR}", "--cubin", "-Xptxas",
                             "-v", str(src), "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("0 bytes spill stores, 0 bytes spill loads") == 2 * len(formats), result.stderr


def test_tile_rings_fit_static_shared_memory():
    for tile in (native_moe.SMALL_TILE, native_moe.LARGE_TILE):
        for code in native_moe.GROUPED_FORMATS:
            for gated in (True, False):
                stages = tile.stages(code, gated)
                weight = {native_moe.Q8: 32, native_moe.F16: 64}.get(code, 16) * tile.bn * (2 if gated else 1)
                assert stages >= 3 and stages * (tile.bm * 64 + weight) <= 48 * 1024


KGEMV_WRAPPER = """
#include "moe.cuh"
extern "C" __global__ void __launch_bounds__(128) gate_up(int t, const void* x, const void* ids, const void* g0,
    const void* g1, const void* g2, const void* g3, const void* g4, const void* g5, const void* u0, const void* u1,
    const void* u2, const void* u3, const void* u4, const void* u5, void* gu) {
  ember::moe::kgemv_gate_up<7, 7, 4096, 14336, 2, 4, 2, 4>(t, x, ids, g0, g1, g2, g3, g4, g5, u0, u1, u2, u3, u4, u5,
                                                           gu);
}
extern "C" __global__ void __launch_bounds__(128) gate_up_mixed(int t, const void* x, const void* ids, const void* g0,
    const void* g1, const void* g2, const void* g3, const void* g4, const void* g5, const void* u0, const void* u1,
    const void* u2, const void* u3, const void* u4, const void* u5, void* gu) {
  ember::moe::kgemv_gate_up<5, 6, 2048, 768, 8, 4, 2, 4>(t, x, ids, g0, g1, g2, g3, g4, g5, u0, u1, u2, u3, u4, u5,
                                                         gu);
}
extern "C" __global__ void __launch_bounds__(256) down(int t, const void* gu, const void* ids, const void* d0,
    const void* d1, const void* d2, const void* d3, const void* d4, const void* d5, void* ys) {
  ember::moe::kgemv_down<9, 4096, 14336, 2, 8, 2, 4>(t, gu, ids, d0, d1, d2, d3, d4, d5, ys);
}
extern "C" __global__ void __launch_bounds__(256) dequant_q4_k(int64_t rows, const void* w0, const void* w1,
    const void* w2, const void* w3, const void* w4, const void* w5, void* out) {
  ember::moe::dequant<7, 4096>(rows, w0, w1, w2, w3, w4, w5, out);
}
extern "C" __global__ void __launch_bounds__(256) dequant_q6_k(int64_t rows, const void* w0, const void* w1,
    const void* w2, const void* w3, const void* w4, const void* w5, void* out) {
  ember::moe::dequant<9, 14336>(rows, w0, w1, w2, w3, w4, w5, out);
}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_kgemv_plan_kernels_compile_without_spills(tmp_path):
    """The kgemv plan's kernels at Mixtral-8x7B's shapes (Q4_K gate/up, Q6_K down), Qwen3-30B-A3B's with mixed
    Q5_0 / Q5_1 gate and up, and the dequantization to fp16 for prefill."""
    from ember.targets.cuda.device_code import KERNEL_DIR

    src = tmp_path / "k.cu"
    src.write_text(KGEMV_WRAPPER)
    result = subprocess.run(["nvcc", "-arch=sm_90", "-O3", "-std=c++17", f"-I{KERNEL_DIR}", "--cubin", "-Xptxas",
                             "-v", str(src), "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("0 bytes spill stores, 0 bytes spill loads") == 5, result.stderr
