"""GGUF Q5_0 / Q5_1 / Q2_K .. Q6_K kept native: repacked blocks unpack to gguf-py's dequantized values bit for bit.

gguf 0.19 quantizes only Q5_0/Q5_1 (of these), so the K-quants are checked on random super blocks in their byte
layout (every byte pattern, finite fp16 d/dmin), which also covers what any quantizer can emit.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from hypothesis import given, settings, strategies as st

from ember.ir.graph import Param
from ember.ir.types import TensorType
from ember.passes.quant_kblocks import BLOCK_BYTES, kquant_scale_codes, q3_k_scale_codes
from ember.passes.quant_recipes import RECIPES, more_bits
from ember.passes.quant_schemes import GGML_TO_SCHEME, SCHEMES, dequantize, from_ggml_blocks, quantize

TYPES = list(BLOCK_BYTES)
# where each type keeps its fp16 fields (byte offsets in a block)
HALF_FIELDS = {"Q5_0": (0,), "Q5_1": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2),
               "Q6_K": (208,)}


def random_blocks(ggml_type: str, rows: int, blocks: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """uint8 [rows, blocks * bytes]: random bytes, with finite fp16 (normal, subnormal, zero, negative) headers."""
    rng = np.random.default_rng(seed)
    size = BLOCK_BYTES[ggml_type][0]
    raw = rng.integers(0, 256, (rows, blocks, size), dtype=np.uint8)
    for offset in HALF_FIELDS[ggml_type]:
        halves = np.clip(rng.standard_normal((rows, blocks)) * scale, -65000, 65000).astype(np.float16)
        halves.flat[::7] = np.float16(6e-8)  # subnormal
        halves.flat[3::11] = np.float16(0)
        raw[..., offset:offset + 2] = halves.view(np.uint8).reshape(rows, blocks, 2)
    return raw.reshape(rows, -1)


def _check_exact(raw: np.ndarray, ggml_type: str) -> None:
    scheme = SCHEMES[GGML_TO_SCHEME[ggml_type]]
    cols = raw.shape[1] // BLOCK_BYTES[ggml_type][0] * BLOCK_BYTES[ggml_type][1]
    packed = from_ggml_blocks(raw, ggml_type, cols)
    types = scheme.format.piece_types(raw.shape[0], cols)
    assert [(tuple(t.shape), t.dtype) for t in types] == [(p.shape, str(p.dtype)) for p in packed.pieces()]
    ours = dequantize(packed, scheme.format, cols)
    theirs = gguf.quants.dequantize(raw, Q[ggml_type])
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))  # bits, signed zeros included


@pytest.mark.parametrize("ggml_type", TYPES)
def test_random_blocks_unpack_bit_exactly(ggml_type):
    _check_exact(random_blocks(ggml_type, 7, 3, seed=1), ggml_type)


@settings(max_examples=25, deadline=None)
@given(ggml_type=st.sampled_from(TYPES), rows=st.integers(1, 4), blocks=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1e-4, 0.02, 3.0, 6e4]))
def test_any_super_block_unpacks_bit_exactly(ggml_type, rows, blocks, seed, scale):
    _check_exact(random_blocks(ggml_type, rows, blocks, seed, scale), ggml_type)


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q5_1])
def test_q5_quantizer_matches_gguf(qtype):
    """ember quantizes float weights into Q5_0/Q5_1 exactly as gguf-py (ggml's reference) does."""
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.05, (12, 256)).astype(np.float32)
    w[0, :32] = 0
    blocks = gguf.quants.quantize(w, qtype)
    ours = quantize(w, SCHEMES[GGML_TO_SCHEME[qtype.name]].format)
    for a, b in zip(ours.pieces(), from_ggml_blocks(blocks, qtype.name, 256).pieces()):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    _check_exact(blocks, qtype.name)


def test_kquant_scale_codes_match_gguf():
    raw = np.random.default_rng(3).integers(0, 256, (40, 12), dtype=np.uint8)
    ours = kquant_scale_codes(raw)
    theirs = gguf.quants.Q4_K.get_scale_min(raw)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.reshape(40, 8), b.reshape(40, 8))


def test_q3_k_scale_codes_cover_every_6_bit_code():
    """Every group's 6-bit code reaches every value: a byte pattern per code, unpacked against gguf's dequantize of a
    block whose codes are all 1 above the offset (hmask set, low bits 1) and d = 1, which then equals scale - 32."""
    raw = np.zeros((64, 110), np.uint8)
    raw[:, :32] = 0xFF  # hmask: no -4
    raw[:, 32:96] = 0x55  # every 2-bit code 1
    raw[:, 108:110] = np.array([1.0], np.float16).view(np.uint8)
    codes = np.arange(64, dtype=np.uint8)  # block b: every group's code = b
    for g in range(16):
        raw[:, 96 + g % 8] |= (codes & np.uint8(15)) << np.uint8(4 * (g // 8))
        raw[:, 104 + g % 4] |= (codes >> np.uint8(4)) << np.uint8(2 * (g // 4))
    theirs = gguf.quants.dequantize(raw, Q.Q3_K).reshape(64, 16, 16)[..., 0]
    ours = q3_k_scale_codes(raw[:, 96:108])
    np.testing.assert_array_equal(ours.astype(np.float32), theirs)
    assert (ours == (codes.astype(np.int16) - 32)[:, None]).all()


@pytest.mark.parametrize("scheme", ["q2_k", "q3_k", "q4_k"])
def test_kquants_are_not_made_from_floats(scheme):
    bits = SCHEMES[scheme].format.bits
    with pytest.raises(ValueError, match=f"does not quantize float weights into {bits}-bit super blocks"):
        quantize(np.zeros((2, 256), np.float32), SCHEMES[scheme].format)


def test_low_bit_formats_need_super_blocks():
    from ember.ir.ops_quant import QuantFormat

    with pytest.raises(ValueError, match="3-bit weights come only in super blocks"):
        QuantFormat(3, 16, False)
    fmt = SCHEMES["q2_k"].format
    assert fmt.piece_names == ("qweight", "scales", "super", "super_mins")  # min codes share the scale bytes
    assert SCHEMES["q3_k"].format.piece_names == ("qweight", "qhigh", "scales", "super")
    # bits per weight as stored: Q2_K's 2.625 (GGUF's 84 bytes per 256); Q3_K 3.5625 (GGUF 3.4375: codes as bytes)
    for scheme, expected in (("q2_k", 2.625), ("q3_k", 3.5625)):
        types = SCHEMES[scheme].format.piece_types(4, 512)
        bits = sum(np.prod(t.shape) * np.dtype(t.dtype).itemsize * 8 for t in types) / (4 * 512)
        assert bits == expected


def test_q4_k_m_recipe_follows_llama_cpp():
    recipe = RECIPES["q4_k_m"]
    layers = 32
    v = [recipe.scheme_for(f"model.layers.{i}.self_attn.v_proj.weight", 4096, layers, False) for i in range(layers)]
    assert [i for i, s in enumerate(v) if s == "q6_k"] == [i for i in range(layers) if more_bits(i, layers)]
    assert v.count("q6_k") == 16 and set(v) == {"q4_k", "q6_k"}  # llama3-8b: 16 of 32 layers
    assert recipe.scheme_for("model.layers.3.mlp.gate_proj.weight", 4096, layers, False) == "q4_k"
    assert recipe.scheme_for("lm_head.weight", 4096, layers, True) == "q6_k"
    assert recipe.scheme_for("model.layers.0.mlp.down_proj.weight", 576, layers, False) == "q8f16"  # fallback
    assert recipe.scheme_for("model.layers.3.mlp.up_proj.weight", 576, layers, False) == "q5f16"


def test_mixed_schemes_are_not_fused():
    """A Q4_K_M file's q/k (Q4_K) and v (Q6_K) projections stay three linears; gate/up (both Q4_K) fuse."""
    from ember.frontend.config import ModelConfig
    from ember.frontend.models import build_module
    from ember.passes.manager import PassManager, default_pipeline
    from ember.passes.quantize import SourceFormats

    from model_fixtures import llama_config

    config = llama_config(hidden_size=256, intermediate_size=512, num_hidden_layers=1, head_dim=64).to_dict()
    module = build_module(ModelConfig.from_dict(config), "tiny")
    names = [n for n in module.params if n.endswith(".weight") and module.params[n].type.ndim == 2]
    types = {n: ("Q6_K" if ".v_proj." in n or "lm_head" in n else "Q4_K") for n in names}
    module.attrs["source_formats"] = SourceFormats(types, keep_native=True)
    module = PassManager(default_pipeline("q4_k")).run(module)
    schemes = {n: p.info.get("scheme") for n, p in module.params.items()}
    assert schemes["model.layers.0.self_attn.v_proj.qweight"] == "q6_k"
    assert schemes["model.layers.0.self_attn.q_proj.qweight"] == "q4_k"
    assert schemes["model.layers.0.mlp.gate_up_proj.qweight"] == "q4_k"
    assert "model.layers.0.self_attn.qkv_proj.qweight" not in schemes
    assert isinstance(module.params["model.layers.0.mlp.gate_up_proj.super"], Param)
    assert module.params["model.layers.0.mlp.gate_up_proj.super"].type == TensorType((1024, 1), "float16")


def test_q4_k_m_recipe_gives_experts_its_mix():
    """`--quant q4_k_m` on a mixture of experts: gate/up experts q4_k, the down experts q6_k in llama.cpp's
    more-bits layers (its ffn_down_exps rule), as one quant_moe per layer with a format per weight."""
    from ember.frontend.config import ModelConfig
    from ember.frontend.models import build_module
    from ember.passes.manager import PassManager, default_pipeline

    layers = 8
    config = {"model_type": "mixtral", "vocab_size": 160, "hidden_size": 256, "intermediate_size": 512,
              "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_local_experts": 4, "num_experts_per_tok": 2}
    module = PassManager(default_pipeline("q4_k_m")).run(build_module(ModelConfig.from_dict(config), "tiny"))
    down = {n: p.info["scheme"] for n, p in module.params.items() if n.endswith("experts.w2.qweight")}
    assert down == {f"model.layers.{i}.block_sparse_moe.experts.w2.qweight": "q6_k" if more_bits(i, layers) else "q4_k"
                    for i in range(layers)}
    moe = [n for _, n in module.iter_nodes() if n.op == "quant_moe"]
    assert {n.attrs["scheme"] for n in moe} == {"q4_k", "q4_k+q6_k"}
    assert all(n.attrs["weight_formats"]["gate"]["scheme"] == "q4_k" for n in moe if "weight_formats" in n.attrs)
