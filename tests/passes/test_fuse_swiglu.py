"""fuse_swiglu on hand-built graphs: silu(gate) * up over the fused gate_up projection -> swiglu(gate_up)."""
from ember.frontend.layers import Linear
from ember.ir import functional as F
from ember.ir.builder import Module, trace
from ember.ir.printer import format_function
from ember.ir.types import TensorType
from ember.passes.dce import DeadCodeElimination
from ember.passes.fuse_linears import FuseParallelLinears
from ember.passes.fuse_swiglu import FuseSwiGLU
from ember.passes.manager import PassManager

SPEC = {"forward": {"x": TensorType((1, "t", 8), "float32")}}


class MLP(Module):
    def __init__(self, swapped=False, leak_up=False):
        self.gate_proj = Linear(8, 12, False, "float32")
        self.up_proj = Linear(8, 12, False, "float32")
        self.down_proj = Linear(12, 8, False, "float32")
        self.swapped, self.leak_up = swapped, leak_up

    def __call__(self, x):
        act, up = F.silu(self.gate_proj(x, name="gate")), self.up_proj(x, name="up")
        out = self.down_proj(up * act if self.swapped else act * up, name="down")
        return (out, up) if self.leak_up else out


class Model(Module):
    def __init__(self, **kwargs):
        self.mlp = MLP(**kwargs)

    def forward(self, x):
        return self.mlp(x)


def run(**kwargs):
    module = trace(Model(**kwargs), SPEC, name="m")
    before = format_function(module.functions["forward"])
    PassManager([FuseParallelLinears(), FuseSwiGLU(), DeadCodeElimination()]).run(module)
    return before, format_function(module.functions["forward"])


def test_silu_times_up_becomes_swiglu():
    before, after = run()
    assert before == "\n".join([
        "func forward(%x: f32[1, t, 8]) {",
        "  %gate.0: f32[1, t, 12] = linear(%x, @mlp.gate_proj.weight)",
        "  %1: f32[1, t, 12] = silu(%gate.0)",
        "  %up.2: f32[1, t, 12] = linear(%x, @mlp.up_proj.weight)",
        "  %3: f32[1, t, 12] = mul(%1, %up.2)",
        "  %down.4: f32[1, t, 8] = linear(%3, @mlp.down_proj.weight)",
        "  return %down.4",
        "}",
    ])
    assert after == "\n".join([
        "func forward(%x: f32[1, t, 8]) {",
        "  %gate_up: f32[1, t, 24] = linear(%x, @mlp.gate_up_proj.weight)",
        "  %3: f32[1, t, 12] = swiglu(%gate_up)",
        "  %down.4: f32[1, t, 8] = linear(%3, @mlp.down_proj.weight)",
        "  return %down.4",
        "}",
    ])


def test_operand_order_does_not_matter():
    _, after = run(swapped=True)
    assert "  %3: f32[1, t, 12] = swiglu(%gate_up)" in after.splitlines()


def test_up_read_elsewhere_keeps_the_split():
    _, after = run(leak_up=True)
    assert "swiglu" not in after and "= split(%gate_up, sizes=[12, 12], axis=-1)" in after
