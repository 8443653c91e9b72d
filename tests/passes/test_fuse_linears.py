"""fuse_linears on hand-built graphs: sibling projections -> one linear + split, fused weights materialize."""
import numpy as np

from ember.frontend.layers import Linear
from ember.ir import functional as F
from ember.ir.builder import Module, trace
from ember.ir.printer import format_function, format_module
from ember.ir.types import TensorType
from ember.passes.dce import DeadCodeElimination
from ember.passes.fuse_linears import FuseParallelLinears
from ember.passes.manager import PassManager
from ember.passes.materialize import materialize

X = TensorType((1, "t", 8), "float32")


class Attention(Module):
    def __init__(self, bias):
        self.q_proj = Linear(8, 8, bias, "float32")
        self.k_proj = Linear(8, 4, bias, "float32")
        self.v_proj = Linear(8, 4, bias, "float32")

    def __call__(self, x):
        return F.concat([self.q_proj(x, name="q"), self.k_proj(x, name="k"), self.v_proj(x, name="v")], axis=-1,
                        name="out")


class Model(Module):
    def __init__(self, bias=False, share_q=False):
        self.attn = Attention(bias)
        self.share_q = share_q

    def prefill(self, x):
        return self.attn(x)

    def decode(self, x):
        out = self.attn(x)
        return F.linear(x, self.attn.q_proj.weight, name="again") if self.share_q else out


def traced(**kwargs):
    return trace(Model(**kwargs), {"prefill": {"x": X}, "decode": {"x": X}}, name="m")


def test_qkv_become_one_linear_and_a_split():
    module = traced(bias=True)
    assert format_function(module.functions["decode"]) == "\n".join([
        "func decode(%x: f32[1, t, 8]) {",
        "  %q.0: f32[1, t, 8] = linear(%x, @attn.q_proj.weight, @attn.q_proj.bias)",
        "  %k.1: f32[1, t, 4] = linear(%x, @attn.k_proj.weight, @attn.k_proj.bias)",
        "  %v.2: f32[1, t, 4] = linear(%x, @attn.v_proj.weight, @attn.v_proj.bias)",
        "  %out.3: f32[1, t, 16] = concat(%q.0, %k.1, %v.2, axis=-1)",
        "  return %out.3",
        "}",
    ])
    PassManager([FuseParallelLinears(), DeadCodeElimination()]).run(module)
    for name in ("prefill", "decode"):  # both functions read the weights, both are rewritten
        assert format_function(module.functions[name]) == "\n".join([
            f"func {name}(%x: f32[1, t, 8]) {{",
            "  %qkv: f32[1, t, 16] = linear(%x, @attn.qkv_proj.weight, @attn.qkv_proj.bias)",
            "  %q.0: f32[1, t, 8], %k.1: f32[1, t, 4], %v.2: f32[1, t, 4] = split(%qkv, sizes=[8, 4, 4], axis=-1)",
            "  %out.3: f32[1, t, 16] = concat(%q.0, %k.1, %v.2, axis=-1)",
            "  return %out.3",
            "}",
        ])
    params = format_module(module).splitlines()[1:3]
    assert params == [
        "param @attn.qkv_proj.weight: f32[16, 8]  {sources: [attn.q_proj.weight, attn.k_proj.weight, "
        "attn.v_proj.weight], source_shapes: [[8, 8], [4, 8], [4, 8]], concat_axis: 0}",
        "param @attn.qkv_proj.bias: f32[16]  {sources: [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias], "
        "source_shapes: [[8], [4], [4]], concat_axis: 0}",
    ]
    assert list(module.params) == ["attn.qkv_proj.weight", "attn.qkv_proj.bias"]


class Arrays:
    def __init__(self, arrays):
        self.arrays = arrays

    def get(self, name):
        return self.arrays[name]

    def origin(self, name):
        return "test"


def test_fused_weight_materializes_as_row_concatenation():
    module = traced(bias=True)
    rng = np.random.default_rng(0)
    shapes = {f"attn.{p}_proj.{kind}": shape for p, rows in (("q", 8), ("k", 4), ("v", 4))
              for kind, shape in (("weight", (rows, 8)), ("bias", (rows,)))}
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    FuseParallelLinears()(module)
    weight = materialize(module.params["attn.qkv_proj.weight"], Arrays(arrays))
    bias = materialize(module.params["attn.qkv_proj.bias"], Arrays(arrays))
    np.testing.assert_array_equal(weight, np.concatenate([arrays[f"attn.{p}_proj.weight"] for p in "qkv"]))
    np.testing.assert_array_equal(bias, np.concatenate([arrays[f"attn.{p}_proj.bias"] for p in "qkv"]))


def test_weight_read_elsewhere_blocks_the_fusion_everywhere():
    module = traced(share_q=True)
    before = {name: format_function(f) for name, f in module.functions.items()}
    PassManager([FuseParallelLinears()]).run(module)
    assert {name: format_function(f) for name, f in module.functions.items()} == before
    assert "attn.qkv_proj.weight" not in module.params
