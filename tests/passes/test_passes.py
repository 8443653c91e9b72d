"""Each pass on a hand-built IR graph: the printed IR before and after."""
import pytest

from ember.errors import ConfigError
from ember.ir import functional as F
from ember.ir.builder import Module, Parameter, trace
from ember.ir.printer import format_function
from ember.ir.types import TensorType
from ember.passes.dce import DeadCodeElimination
from ember.passes.fuse_rope import FuseRopeIntoAttention
from ember.passes.manager import PassManager
from ember.passes.quantize import Quantize

SPEC = {"forward": {"x": TensorType((1, "t", 8), "float32")}}


class Attn(Module):
    def __init__(self, share_k=False):
        self.w = Parameter((8, 8), "float32")
        self.unused = Parameter((3,), "float32")
        self.share_k = share_k

    def forward(self, x):
        q = F.linear(x, self.w, name="q").reshape(1, "t", 2, 4)
        k = F.linear(x, self.w, name="k").reshape(1, "t", 2, 4)
        F.silu(x, name="dead")
        qr = F.rope(q, 10000.0, name="qr")
        kr = F.rope(k, 10000.0, name="kr")
        o = F.paged_attention(qr, kr, k, layer=0, sm_scale=0.5, name="o")
        if self.share_k:
            return o, kr
        return o


def test_dce_drops_dead_nodes_and_unused_params():
    module = trace(Attn(), SPEC, name="m")
    assert "dead" in format_function(module.functions["forward"])
    DeadCodeElimination()(module)
    text = format_function(module.functions["forward"])
    assert "silu" not in text and "paged_attention" in text
    assert list(module.params) == ["w"]


def test_fuse_rope_moves_rope_into_attention():
    module = trace(Attn(), SPEC, name="m")
    PassManager([FuseRopeIntoAttention(), DeadCodeElimination()]).run(module)
    assert format_function(module.functions["forward"]) == "\n".join([
        "func forward(%x: f32[1, t, 8]) {",
        "  %q.0: f32[1, t, 8] = linear(%x, @w)",
        "  %1: f32[1, t, 2, 4] = reshape(%q.0, shape=[1, t, 2, 4])",
        "  %k.2: f32[1, t, 8] = linear(%x, @w)",
        "  %3: f32[1, t, 2, 4] = reshape(%k.2, shape=[1, t, 2, 4])",
        "  %o.7: f32[1, t, 2, 4] = paged_attention(%1, %3, %3, layer=0, sm_scale=0.5, "
        "rope={theta: 10000, rotary_dim: 4})",
        "  return %o.7",
        "}",
    ])


def test_fuse_rope_leaves_rope_that_others_read():
    module = trace(Attn(share_k=True), SPEC, name="m")
    FuseRopeIntoAttention()(module)
    text = format_function(module.functions["forward"])
    assert "rope={" not in text


class TwoLayers(Module):
    """Two attention layers with their own rope (Gemma 3: local and global bases)."""

    def __init__(self, ropes):
        self.w = Parameter((8, 8), "float32")
        self.ropes = ropes

    def forward(self, x):
        for layer, (theta, scaling) in enumerate(self.ropes):
            q = F.linear(x, self.w).reshape(1, "t", 2, 4)
            k = F.linear(x, self.w).reshape(1, "t", 2, 4)
            x = F.paged_attention(F.rope(q, theta, scaling), F.rope(k, theta, scaling), k, layer=layer,
                                  sm_scale=0.5).reshape(1, "t", 8)
        return x


@pytest.mark.parametrize("ropes,fused", [
    (((1e4, None), (1e4, None)), True),
    (((1e4, None), (1e6, None)), False),  # the KV cache holds one rope: all layers fuse, or none
    (((1e4, {"rope_type": "linear", "factor": 8.0}),) * 2, False),  # a scaling the cache's kernels do not compute
])
def test_fuse_rope_fuses_every_layer_or_none(ropes, fused):
    module = trace(TwoLayers(ropes), SPEC, name="m")
    FuseRopeIntoAttention()(module)
    text = format_function(module.functions["forward"])
    assert text.count("rope={") == (2 if fused else 0)


@pytest.mark.parametrize("scheme,dtype", [("q0f16", "f16"), ("q0f32", "f32"), ("q0bf16", "bf16")])
def test_quantize_q0_retypes_weights_only(scheme, dtype):
    module = trace(Attn(), SPEC, name="m")
    PassManager([Quantize(scheme)]).run(module)
    text = format_function(module.functions["forward"])
    assert f"f32[1, t, 8] = linear(%x, @w)" in text  # activations keep the compute dtype
    assert module.params["w"].type == TensorType((8, 8), {"f16": "float16", "f32": "float32", "bf16": "bfloat16"}[dtype])
    assert module.params["w"].info["scheme"] == scheme


def test_unknown_scheme_and_print_after():
    with pytest.raises(ValueError, match="q9f9"):
        Quantize("q9f9")
    printed = []
    module = trace(Attn(), SPEC, name="m")
    PassManager([DeadCodeElimination()], print_after={"dce"}, printer=printed.append).run(module)
    assert printed and printed[0].startswith("// IR after dce")
    with pytest.raises(ConfigError, match="no pass named nope"):
        PassManager([DeadCodeElimination()], print_after={"nope"}).run(module)
