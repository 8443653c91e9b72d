"""ember's cuda low-batch GEMM (targets/cuda/native_lowbatch.py, kernels/lowbatch.cuh), no GPU needed: the lane /
k mapping of the mma fragments simulated in numpy against x @ W^T, where the lowering takes a quant_linear (the
batched decode) and where it leaves it, and that nvcc compiles the kernel to HMMA without spills. The kernel's
numbers are checked on a GPU by tools/lowbatch_bench.py."""
from __future__ import annotations

import re
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from cuda_lowered import calls_by_function, lowered

CONFIG = {"model_type": "llama", "vocab_size": 320, "hidden_size": 256, "intermediate_size": 512,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 256, "tie_word_embeddings": False}
# hidden 256, head_dim 64: fused qkv (4 + 2 + 2) * 64 = 512 rows, o 256, fused gate_up 1024, down 256 from K 512
LAYERS = {(512, 256), (256, 256), (1024, 256), (256, 512)}
HEAD = (320, 256)  # the LM head: q8f16 in every scheme here


def _b_fragment_q4(k0: int, t: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per mma step (8 per 128-k tile): the physical k of b0b1 and b2b3 of lane t (weight row g's codes)."""
    out = []
    for w in range(4):  # word w of the lane's 16-byte load: k = k0 + 32 t + 8 w + nibble
        base = k0 + 32 * t + 8 * w
        # {n0,n4}, {n1,n5} -> step 2w; {n2,n6}, {n3,n7} -> step 2w+1
        out.append((np.array([base + 0, base + 4]), np.array([base + 1, base + 5])))
        out.append((np.array([base + 2, base + 6]), np.array([base + 3, base + 7])))
    return out


def _a_fragment_q4(k0: int, t: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per mma step: the physical k of a0a1 (= a2a3, row g+8) and a4a5 (= a6a7) of lane t: x chunk at
    k0 + 32 t + 8 w in pair order {x0,x4}, {x1,x5}, {x2,x6}, {x3,x7}, pairs 2h and 2h+1 for step 2w+h."""
    out = []
    for w in range(4):
        chunk = k0 + 32 * t + 8 * w
        pairs = [np.array([chunk + i, chunk + i + 4]) for i in range(4)]
        for h in range(2):
            out.append((pairs[2 * h], pairs[2 * h + 1]))
    return out


def _b_fragment_q8(k0: int, t: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for j in range(4):  # word j of 16 int8 codes at k0 + 16 t: {c0,c1}, {c2,c3}
        base = k0 + 16 * t + 4 * j
        out.append((np.array([base, base + 1]), np.array([base + 2, base + 3])))
    return out


def _a_fragment_q8(k0: int, t: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    xs = k0 + 16 * t + np.arange(16)  # two 16-byte chunks in natural order: words 2j, 2j+1 for step j
    for j in range(4):
        out.append((xs[4 * j:4 * j + 2], xs[4 * j + 2:4 * j + 4]))
    return out


def _simulate(x: np.ndarray, w: np.ndarray, q8: bool) -> np.ndarray:
    """y = x . W^T computed the way the mma fragments are filled: per tile and k-step, the logical 16x16 A and 16x8
    B that the 32 lanes' registers form (PTX m16n8k16 layouts), multiplied and summed. x: [16, K], w: [8, K]."""
    tile = 64 if q8 else 128
    steps = tile // 16
    y = np.zeros((16, 8))
    for k0 in range(0, x.shape[1], tile):
        for s in range(steps):
            a = np.full((16, 16), np.nan)
            b = np.full((16, 8), np.nan)
            for lane in range(32):
                g, t = lane // 4, lane % 4
                bk = (_b_fragment_q8(k0, t) if q8 else _b_fragment_q4(k0, t))[s]
                ak = (_a_fragment_q8(k0, t) if q8 else _a_fragment_q4(k0, t))[s]
                b[2 * t:2 * t + 2, g] = w[g, bk[0]]  # b0, b1
                b[2 * t + 8:2 * t + 10, g] = w[g, bk[1]]  # b2, b3
                a[g, 2 * t:2 * t + 2] = x[g, ak[0]]  # a0, a1
                a[g + 8, 2 * t:2 * t + 2] = x[g + 8, ak[0]]  # a2, a3
                a[g, 2 * t + 8:2 * t + 10] = x[g, ak[1]]  # a4, a5
                a[g + 8, 2 * t + 8:2 * t + 10] = x[g + 8, ak[1]]  # a6, a7
            assert not np.isnan(a).any() and not np.isnan(b).any()
            y += a @ b
    return y


@pytest.mark.parametrize("q8", [False, True])
def test_fragment_mapping_is_a_permutation_of_k(q8):
    """Every physical k of a tile is used exactly once per row, by A and B alike, so y = x @ W^T."""
    rng = np.random.default_rng(0)
    k = 256
    x = rng.standard_normal((16, k))
    w = rng.integers(-8, 8, (8, k)).astype(np.float64)
    np.testing.assert_allclose(_simulate(x, w, q8), x @ w.T, rtol=1e-12, atol=1e-9)
    tile = 64 if q8 else 128
    for fragment in (_b_fragment_q8, _a_fragment_q8) if q8 else (_b_fragment_q4, _a_fragment_q4):
        used = sorted(int(i) for t in range(4) for pair in fragment(0, t) for half in pair for i in half)
        assert used == list(range(tile))


def test_nibble_pairs_match_the_packed_words():
    """The magic-number dequant's half2 of word w: {n0,n4} (mask 0x000F000F), {n1,n5} (0x00F000F0), then the
    same of w >> 8: {n2,n6}, {n3,n7}; with nibble i of word j = k 8j + i (ir/ops_quant.py's packing)."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, 8)
    word = int(sum(int(c) << (4 * i) for i, c in enumerate(codes)))

    def pair(v: int, mask: int) -> tuple[int, int]:
        lo, hi = v & mask & 0xFFFF, (v & mask) >> 16
        shift = 4 if mask == 0x00F000F0 else 0
        return lo >> shift, hi >> shift

    got = [pair(word, 0x000F000F), pair(word, 0x00F000F0), pair(word >> 8, 0x000F000F), pair(word >> 8, 0x00F000F0)]
    assert got == [(codes[0], codes[4]), (codes[1], codes[5]), (codes[2], codes[6]), (codes[3], codes[7])]


def test_dequant_constants_are_exact():
    """(1024 + q) - 1032 = q - 8 and (1024 + 16 q) / 16 - 72 = q - 8 in fp16, for every code (and the Q4_MIN and
    Q8 forms), so the only rounding is the multiplication by the scale."""
    h = lambda bits: np.array([bits], dtype=np.uint16).view(np.float16)[0]  # noqa: E731
    q = np.arange(16)
    lo = (np.float16(1024) + q.astype(np.float16)).astype(np.float16)
    hi = (np.float16(1024) + (16 * q).astype(np.float16)).astype(np.float16)
    assert (lo + h(0xE408) == q - 8).all() and (lo + h(0xE400) == q).all()
    assert (hi * h(0x2C00) + h(0xD480) == q - 8).all() and (hi * h(0x2C00) + h(0xD400) == q).all()
    b = np.arange(-128, 128)
    u = (np.float16(1024) + (b + 128).astype(np.float16)).astype(np.float16)
    assert (u + h(0xE480) == b).all()


# -- the lowering --------------------------------------------------------------------------------------------------


def lowbatch_calls(relax_mod) -> dict[str, list[str]]:
    return calls_by_function(relax_mod, "ember::lowbatch")


def _lowered(scheme: str, dtype: str = "float16"):
    return lowered(CONFIG, scheme, dtype)


def _shape(name: str) -> tuple[int, int]:
    args = name[name.index("<") + 1:name.index(">")].split(",")
    return int(args[1]), int(args[2])


@pytest.mark.parametrize("scheme,code,group", [("q4f16", 0, 32), ("q4f16_1", 1, 32), ("q4f16g128", 0, 128),
                                               ("q8f16", 2, 32)])
def test_batched_decode_linears_take_the_kernel(scheme, code, group):
    """The batched decode's four layers and its q8f16 LM head run the low-batch kernel; prefill and decode1 not."""
    calls = lowbatch_calls(_lowered(scheme))
    assert calls["prefill"] == [] and calls["decode1"] == []
    assert {_shape(n) for n in calls["decode"]} == LAYERS | {HEAD} and len(calls["decode"]) == 5
    for name in calls["decode"]:
        layer_code, layer_group = (2, 32) if _shape(name) == HEAD else (code, group)
        assert name.startswith(f"ember::lowbatch::run<{layer_code}, ") and f", {layer_group}, " in name


@pytest.mark.parametrize("env", ["EMBER_CUDA_LOWBATCH", "EMBER_CUDA_GEMV"])
def test_off_by_environment(monkeypatch, env):
    monkeypatch.setenv(env, "0")
    assert all(calls == [] for calls in lowbatch_calls(_lowered("q4f16")).values())


def test_float_weights_and_fp32_fall_back():
    assert all(c == [] for c in lowbatch_calls(_lowered("q0f16")).values())
    assert all(c == [] for c in lowbatch_calls(_lowered("q4f16", "float32")).values())


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

    from ember.targets.cuda import native_lowbatch as lb

    batch = tvm.tirx.Var("batch", "int64")
    decode = SimpleNamespace(symbols={"batch": batch}, module=None)
    taken = lb.plan(decode, _node(4, 32, False, 4096), _args([batch, 1], 6144, 4096))
    assert taken is not None and taken[0] == (lb.Q4, 6144, 4096, 32, lb.NO_BIAS)
    assert lb.plan(decode, _node(4, 32, True, 4096), _args([batch, 1], 64, 4096, pieces=3))[0][0] == lb.Q4_MIN
    assert lb.plan(decode, _node(8, 32, False, 4096), _args([batch, 1], 128256, 4096))[0][0] == lb.Q8
    assert lb.plan(decode, _node(4, 32, False, 96), _args([batch], 8, 96, bias="float32"))[0][4] == lb.FLOAT_BIAS
    n = tvm.tirx.Var("total_len", "int64")
    prefill_module = SimpleNamespace(functions={"prefill": SimpleNamespace(
        inputs=[SimpleNamespace(type=SimpleNamespace(shape=(1, "total_len")))])})
    prefill = SimpleNamespace(symbols={"total_len": n}, module=prefill_module)
    refused = {
        "decode1 (static)": (decode, _node(4, 32, False, 4096), _args([1, 1], 64, 4096)),
        "prefill tokens": (prefill, _node(4, 32, False, 4096), _args([1, n], 64, 4096)),
        "two symbolic dims": (decode, _node(4, 32, False, 4096), _args([batch, batch], 64, 4096)),
        "static batch 2": (decode, _node(4, 32, False, 4096), _args([batch, 2], 64, 4096)),
        "group 16 (4-bit)": (decode, _node(4, 16, False, 4096), _args([batch, 1], 64, 4096)),
        "K not whole lane loads": (decode, _node(4, 32, False, 4100), _args([batch, 1], 64, 4100)),
        "bf16 bias": (decode, _node(4, 32, False, 96), _args([batch], 8, 96, bias="bfloat16")),
    }
    for why, (it, node, args) in refused.items():
        assert lb.plan(it, node, args) is None, why
    x32 = _args([batch, 1], 64, 4096)
    x32[0] = SimpleNamespace(shape=x32[0].shape, dtype="float32")
    assert lb.plan(decode, _node(4, 32, False, 4096), x32) is None


# -- nvcc ----------------------------------------------------------------------------------------------------------

WRAPPER = """
#include "lowbatch.cuh"
extern "C" __global__ void __launch_bounds__({threads}) kern(int b, const void* x, const void* w, const void* s,
    const void* m, const void* bias, void* y) {{ ember::lowbatch::run<{args}>(b, x, w, s, m, bias, y); }}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("args", ["0, 4096, 4096, 32, 8, 4, 1, 2, 0, 0", "1, 6144, 4096, 32, 8, 4, 1, 2, 0, 1",
                                  "0, 4096, 14336, 128, 4, 2, 1, 2, 1, 0", "2, 128256, 4096, 32, 4, 4, 1, 2, 1, 2",
                                  "1, 1000, 1056, 32, 4, 2, 2, 1, 1, 1"])
def test_kernel_compiles_without_spills(tmp_path, args):
    from ember.targets.cuda.device_code import KERNEL_DIR

    threads = 32 * int(args.split(",")[4])
    src = tmp_path / "k.cu"
    src.write_text(WRAPPER.format(threads=threads, args=args))
    result = subprocess.run(["nvcc", "-arch=sm_90", "-O3", "-std=c++17", f"-I{KERNEL_DIR}", "--cubin",
                             "-Xptxas", "-v", str(src), "-o", str(tmp_path / "k.cubin")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"0 bytes spill stores, 0 bytes spill loads", result.stderr), result.stderr
