"""The Quantize pass on hand-built IR graphs: printed IR before and after, scheme choice per tensor, notes."""
from __future__ import annotations

import pytest

from ember.ir import functional as F
from ember.ir.builder import Module, Parameter, trace
from ember.ir.printer import format_function, format_module
from ember.ir.types import TensorType
from ember.ir.verifier import VerifyError, verify
from ember.passes.manager import PassManager
from ember.passes.quantize import QUANT_HELP, Quantize, SourceFormats, default_quant, quantization_notes
from ember.passes.quant_schemes import SCHEMES


class Tiny(Module):
    """embedding -> rms_norm -> linear(+bias) -> silu -> linear -> residual -> LM head (vocab 64)."""

    def __init__(self, tied: bool = False) -> None:
        self.embed = Parameter((64, 32), "float32")
        self.norm = Parameter((32,), "float32")
        self.up = Parameter((48, 32), "float32")
        self.up_bias = Parameter((48,), "float32")
        self.down = Parameter((32, 48), "float32")
        self.tied = tied
        if not tied:
            self.head = Parameter((64, 32), "float32")

    def forward(self, ids):
        x = F.embedding(ids, self.embed, dtype="float32", name="x")
        h = F.rms_norm(x, self.norm, 1e-5, name="h")
        y = F.linear(F.silu(F.linear(h, self.up, self.up_bias, name="up")), self.down, name="down")
        return F.linear(x + y, self.embed if self.tied else self.head, name="logits")


def build(tied: bool = False):
    module = trace(Tiny(tied), {"forward": {"ids": TensorType((1, "t"), "int32")}}, name="tiny",
                   attrs={"vocab_size": 64})
    for param in module.params.values():
        param.info["sources"] = [param.name]
    return module


BEFORE = """\
func forward(%ids: i32[1, t]) {
  %x.0: f32[1, t, 32] = embedding(%ids, @embed, dtype=float32)
  %h.1: f32[1, t, 32] = rms_norm(%x.0, @norm, eps=1e-05)
  %up.2: f32[1, t, 48] = linear(%h.1, @up, @up_bias)
  %3: f32[1, t, 48] = silu(%up.2)
  %down.4: f32[1, t, 32] = linear(%3, @down)
  %5: f32[1, t, 32] = add(%x.0, %down.4)
  %logits.6: f32[1, t, 64] = linear(%5, @head)
  return %logits.6
}"""

AFTER_Q4F16_1 = """\
func forward(%ids: i32[1, t]) {
  %x.0: f32[1, t, 32] = quant_embedding(%ids, @embed.qweight, @embed.scales, dtype=float32, scheme=q8f16, bits=8, \
group_size=32, has_min=False, in_features=32)
  %h.1: f32[1, t, 32] = rms_norm(%x.0, @norm, eps=1e-05)
  %up.2: f32[1, t, 48] = quant_linear(%h.1, @up.qweight, @up.scales, @up.mins, @up_bias, scheme=q4f16_1, bits=4, \
group_size=32, has_min=True, in_features=32)
  %3: f32[1, t, 48] = silu(%up.2)
  %down.4: f32[1, t, 32] = quant_linear(%3, @down.qweight, @down.scales, @down.mins, scheme=q4f16_1, bits=4, \
group_size=32, has_min=True, in_features=48)
  %5: f32[1, t, 32] = add(%x.0, %down.4)
  %logits.6: f32[1, t, 64] = quant_linear(%5, @head.qweight, @head.scales, scheme=q8f16, bits=8, group_size=32, \
has_min=False, in_features=32)
  return %logits.6
}"""


def param_lines(module) -> list[str]:
    return [line for line in format_module(module).splitlines() if line.startswith("param ")]


def test_q4f16_1_rewrites_linears_and_keeps_edges_at_q8():
    module = build()
    assert format_function(module.functions["forward"]) == BEFORE
    PassManager([Quantize("q4f16_1")]).run(module)  # verifies after the pass
    assert format_function(module.functions["forward"]) == AFTER_Q4F16_1
    assert param_lines(module) == [
        "param @embed.qweight: i8[64, 32]  {sources: [embed], transform: quant_weight, scheme: q8f16, "
        "quantized_from: embed}",
        "param @embed.scales: f16[64, 1]  {sources: [embed], transform: quant_scales, scheme: q8f16, "
        "quantized_from: embed}",
        "param @norm: f32[32]  {sources: [norm]}",
        "param @up.qweight: u32[48, 4]  {sources: [up], transform: quant_weight, scheme: q4f16_1, quantized_from: up}",
        "param @up.scales: f16[48, 1]  {sources: [up], transform: quant_scales, scheme: q4f16_1, quantized_from: up}",
        "param @up.mins: f16[48, 1]  {sources: [up], transform: quant_mins, scheme: q4f16_1, quantized_from: up}",
        "param @up_bias: f32[48]  {sources: [up_bias]}",
        "param @down.qweight: u32[32, 6]  {sources: [down], transform: quant_weight, scheme: q4f16_1, "
        "quantized_from: down}",
        "param @down.scales: f16[32, 2]  {sources: [down], transform: quant_scales, scheme: q4f16_1, "
        "quantized_from: down}",
        "param @down.mins: f16[32, 2]  {sources: [down], transform: quant_mins, scheme: q4f16_1, "
        "quantized_from: down}",
        "param @head.qweight: i8[64, 32]  {sources: [head], transform: quant_weight, scheme: q8f16, "
        "quantized_from: head}",
        "param @head.scales: f16[64, 1]  {sources: [head], transform: quant_scales, scheme: q8f16, "
        "quantized_from: head}",
    ]
    assert module.attrs["quantization"] == "q4f16_1"


def test_only_the_logits_linear_is_the_head_when_a_projection_has_vocab_size_rows():
    """`down` has 32 rows; with vocab_size 32 the row count alone would have taken it for the LM head (q8f16)."""
    module = trace(Tiny(), {"forward": {"ids": TensorType((1, "t"), "int32")}}, name="tiny",
                   attrs={"vocab_size": 32})
    for param in module.params.values():
        param.info["sources"] = [param.name]
    PassManager([Quantize("q4f16_1")]).run(module)
    schemes = {p.info["quantized_from"]: p.info["scheme"] for p in module.params.values() if "quantized_from" in p.info}
    assert schemes["down"] == "q4f16_1" and schemes["up"] == "q4f16_1"


@pytest.mark.parametrize("scheme", ["q8f16", "q4f16", "q4f16g128"])
def test_symmetric_schemes_have_no_mins(scheme):
    module = build()
    PassManager([Quantize(scheme)]).run(module)
    fmt = SCHEMES[scheme].format
    assert f"@down.qweight: {'u32[32, 6]' if fmt.bits == 4 else 'i8[32, 48]'}" in format_module(module)
    scales = module.params["down.scales"].type
    assert scales == TensorType((32, -(-48 // fmt.group_size)), "float16")
    assert not any(name.endswith(".mins") for name in module.params)
    assert module.params["head.qweight"].info["scheme"] == SCHEMES[scheme].edge_scheme


def test_tied_head_shares_the_quantized_embedding():
    module = build(tied=True)
    PassManager([Quantize("q4f16")]).run(module)
    text = format_function(module.functions["forward"])
    assert "quant_embedding(%ids, @embed.qweight, @embed.scales" in text
    assert "quant_linear(%5, @embed.qweight, @embed.scales, scheme=q8f16" in text
    assert [n for n in module.params if n.startswith("embed")] == ["embed.qweight", "embed.scales"]


def test_q0_schemes_only_retype():
    module = build()
    PassManager([Quantize("q0f16")]).run(module)
    assert format_function(module.functions["forward"]) == BEFORE
    assert {p.type.dtype for p in module.params.values()} == {"float16"}


def test_gguf_tensors_keep_their_own_type():
    """No --quant on a GGUF: each tensor keeps its type (every type ember reads is held exactly), none is noted."""
    module = build(tied=True)
    types = {"embed": "Q8_0", "norm": "F32", "up": "Q4_1", "up_bias": "F32", "down": "Q5_0"}
    module.attrs["source_formats"] = SourceFormats(types, keep_native=True)
    PassManager([Quantize("q4f16_1")]).run(module)
    schemes = {name: p.info.get("scheme") for name, p in module.params.items()}
    assert schemes == {"embed.qweight": "q8f16", "embed.scales": "q8f16", "norm": "q0f32",
                       "up.qweight": "q4f16_1", "up.scales": "q4f16_1", "up.mins": "q4f16_1", "up_bias": "q0f32",
                       "down.qweight": "q5f16", "down.qhigh": "q5f16", "down.scales": "q5f16"}
    assert module.params["down.qweight"].info["source_format"] == "Q5_0"
    assert quantization_notes(module) == []
    assert "attrs {vocab_size: 64, source_formats: GGUF F32x2 Q8_0x1 Q4_1x1 Q5_0x1 keep_native" \
        in format_module(module)


def test_explicit_scheme_requantizes_other_gguf_types():
    module = build()
    types = {"embed": "Q8_0", "head": "Q8_0", "up": "Q4_1", "down": "Q4_1", "norm": "F32", "up_bias": "F32"}
    module.attrs["source_formats"] = SourceFormats(types, keep_native=False)
    PassManager([Quantize("q4f16")]).run(module)
    assert module.params["up.qweight"].info["scheme"] == "q4f16"
    assert module.params["norm"].type.dtype == "float32" and "scheme" not in module.params["norm"].info
    assert quantization_notes(module) == [
        "requantized from GGUF (dequantized, then quantized again): 2 Q4_1 -> q4f16"]  # Q8_0 edges stay exact


def test_default_scheme_follows_the_dominant_quantized_type():
    formats = SourceFormats({"a": "Q4_1", "b": "Q4_1", "e": "Q8_0", "n": "F32"},
                            elements={"a": 100, "b": 100, "e": 150})
    assert default_quant(formats) == "q4f16_1"
    assert default_quant(SourceFormats({"a": "F16"}, elements={"a": 10})) is None  # float files: target default
    assert default_quant(SourceFormats({"a": "Q6_K", "b": "F16"}, elements={"a": 10, "b": 99})) == "q6_k"
    assert default_quant(None) is None


def test_weights_read_by_other_ops_stay_float():
    class Shared(Module):
        def __init__(self):
            self.w = Parameter((8, 8), "float32")

        def forward(self, x):
            return F.matmul(F.linear(x, self.w, name="y"), self.w, name="z")

    module = trace(Shared(), {"forward": {"x": TensorType((1, 8, 8), "float32")}}, name="m")
    PassManager([Quantize("q4f16")]).run(module)
    assert "quant_linear" not in format_function(module.functions["forward"])
    assert module.params["w"].type == TensorType((8, 8), "float32")


def test_type_rules_reject_mismatched_pieces():
    module = build()
    PassManager([Quantize("q4f16_1")]).run(module)
    module.params["up.scales"].type = TensorType((48, 2), "float16")
    for _, node in module.iter_nodes():
        for value in node.inputs:
            if value.name == "up.scales":
                value.type = module.params["up.scales"].type
    with pytest.raises(VerifyError, match=r"4-bit group-32 weight of 48x32 must be u32\[48, 4\], f16\[48, 1\]"):
        verify(module)


def test_help_names_every_scheme():
    assert all(name in QUANT_HELP for name in SCHEMES)
    with pytest.raises(ValueError, match="q3f16"):
        Quantize("q3f16")
