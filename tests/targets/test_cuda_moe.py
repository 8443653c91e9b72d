"""The cuda lowering of mixture-of-experts blocks (targets/cuda/native_moe.py, kernels/moe.cuh): every entry point's
MoE blocks run ember::moe's three kernels (route, gate_up, down) for each scheme; what the kernels cannot take is
refused in one line. Numerics on a GPU: tools/gemv_parity.py (mixtral, qwen3_moe) against the cpu build."""
from __future__ import annotations

import pytest
from cuda_lowered import calls_by_function, lowered

from ember.targets.lower import LoweringError

QWEN3_MOE = {"model_type": "qwen3_moe", "vocab_size": 160, "hidden_size": 128, "intermediate_size": 192,
             "moe_intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 64, "num_experts": 8, "num_experts_per_tok": 2,
             "norm_topk_prob": True, "mlp_only_layers": [1]}


@pytest.mark.parametrize("scheme,fmt", [("q4f16", 0), ("q4f16_1", 1), ("q8f16", 2), ("q4f16g128", 0),
                                        ("q0f16", 3)])
def test_every_entry_point_routes_on_the_device(scheme, fmt):
    calls = calls_by_function(lowered(QWEN3_MOE, scheme), "ember::moe")
    for function in ("prefill", "decode", "decode1"):
        # one sparse layer (layer 1 is dense): route, then gate_up and down over the selected experts
        assert [c.split("<")[0] for c in calls[function]] == ["ember::moe::route", "ember::moe::gate_up",
                                                               "ember::moe::down"], function
        assert calls[function][0] == "ember::moe::route<8, 2, 1, half>"
        assert calls[function][1].startswith(f"ember::moe::gate_up<{fmt}, 128, 64, 2, ")


def test_bf16_activations_take_the_kernel_too():
    calls = calls_by_function(lowered(QWEN3_MOE, "q4f16_1", dtype="bfloat16"), "ember::moe")
    assert calls["decode"][0].endswith("__nv_bfloat16>")


def test_what_the_kernels_cannot_take_is_refused_in_one_line():
    odd = {**QWEN3_MOE, "moe_intermediate_size": 48}  # not a multiple of 32
    with pytest.raises(LoweringError, match="quant_moe .* has no kernel for float16 activations"):
        lowered(odd, "q4f16")
