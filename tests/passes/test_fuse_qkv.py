"""fuse_qkv on hand-built graphs: attention reads the fused qkv projection and writes o_proj's input."""
from ember.frontend.layers import Linear
from ember.ir import functional as F
from ember.ir.builder import Module, trace
from ember.ir.printer import format_function
from ember.ir.types import TensorType
from ember.passes.dce import DeadCodeElimination
from ember.passes.fuse_linears import FuseParallelLinears
from ember.passes.fuse_qkv import FuseQKVIntoAttention
from ember.passes.fuse_rope import FuseRopeIntoAttention
from ember.passes.manager import PassManager

SPEC = {"forward": {"x": TensorType((1, "t", 8), "float32")}}


class Attention(Module):
    def __init__(self, flatten=True):
        self.q_proj = Linear(8, 8, True, "float32")
        self.k_proj = Linear(8, 4, True, "float32")
        self.v_proj = Linear(8, 4, True, "float32")
        self.flatten = flatten

    def __call__(self, x):
        q = self.q_proj(x, name="q").reshape(1, "t", 2, 4)
        k = self.k_proj(x, name="k").reshape(1, "t", 1, 4)
        v = self.v_proj(x, name="v").reshape(1, "t", 1, 4)
        q, k = F.rope(q, 1e4, name="qr"), F.rope(k, 1e4, name="kr")
        o = F.paged_attention(q, k, v, layer=0, sm_scale=0.5, name="o")
        return o.reshape(1, "t", 8) if self.flatten else o


class Model(Module):
    def __init__(self, flatten=True):
        self.attn = Attention(flatten)

    def forward(self, x):
        return self.attn(x)


def fused(model, passes):
    module = trace(model, SPEC, name="m")
    PassManager(passes + [DeadCodeElimination()]).run(module)
    return format_function(module.functions["forward"])


def test_attention_reads_qkv_and_writes_flat_heads():
    text = fused(Model(), [FuseRopeIntoAttention(), FuseParallelLinears(), FuseQKVIntoAttention()])
    assert text == "\n".join([
        "func forward(%x: f32[1, t, 8]) {",
        "  %qkv: f32[1, t, 16] = linear(%x, @attn.qkv_proj.weight, @attn.qkv_proj.bias)",
        "  %9: f32[1, t, 8] = paged_attention_qkv(%qkv, layer=0, sm_scale=0.5, rope={theta: 10000, rotary_dim: 4}, "
        "num_heads=2, num_kv_heads=1)",
        "  return %9",
        "}",
    ])


def test_heads_layout_kept_when_the_output_is_not_flattened():
    text = fused(Model(flatten=False), [FuseRopeIntoAttention(), FuseParallelLinears(), FuseQKVIntoAttention()])
    assert text.splitlines()[2:4] == [
        "  %attn: f32[1, t, 8] = paged_attention_qkv(%qkv, layer=0, sm_scale=0.5, rope={theta: 10000, rotary_dim: 4}, "
        "num_heads=2, num_kv_heads=1)",
        "  %o.8: f32[1, t, 2, 4] = reshape(%attn, shape=[1, t, 2, 4])",
    ]


def test_rope_left_in_the_graph_blocks_the_fusion():
    text = fused(Model(), [FuseParallelLinears(), FuseQKVIntoAttention()])
    assert "paged_attention_qkv" not in text
    assert "  %o.8: f32[1, t, 2, 4] = paged_attention(%qr.6, %kr.7, %5, layer=0, sm_scale=0.5)" in text
