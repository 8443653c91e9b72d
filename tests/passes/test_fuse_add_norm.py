"""fuse_add_norm on hand-built graphs: residual add + rms_norm -> add_rms_norm with both outputs."""
from ember.frontend.layers import Linear, RMSNorm
from ember.ir.builder import Module, Parameter, trace
from ember.ir.printer import format_function
from ember.ir.types import TensorType
from ember.passes.dce import DeadCodeElimination
from ember.passes.fuse_add_norm import FuseAddRMSNorm
from ember.passes.manager import PassManager

SPEC = {"forward": {"x": TensorType((1, "t", 8), "float32")}}


class Block(Module):
    """Two pre-norm residual steps: x + f(norm(x)), as a decoder layer chains them."""

    def __init__(self, broadcast=False):
        self.norm1 = RMSNorm(8, 1e-5, "float32")
        self.proj1 = Linear(8, 8, False, "float32")
        self.norm2 = RMSNorm(8, 1e-5, "float32")
        self.proj2 = Linear(8, 8, False, "float32")
        self.shift = Parameter((8,), "float32")
        self.broadcast = broadcast

    def forward(self, x):
        x = x + self.proj1(self.norm1(x, name="n1"), name="p1")
        if self.broadcast:
            x = x + self.shift  # [1, t, 8] + [8]: not a residual add
        x = x + self.proj2(self.norm2(x, name="n2"), name="p2")
        return x


def run(model):
    module = trace(model, SPEC, name="m")
    before = format_function(module.functions["forward"])
    PassManager([FuseAddRMSNorm(), DeadCodeElimination()]).run(module)
    return before, format_function(module.functions["forward"])


def test_residual_add_and_norm_become_one_op():
    before, after = run(Block())
    assert before == "\n".join([
        "func forward(%x: f32[1, t, 8]) {",
        "  %n1.0: f32[1, t, 8] = rms_norm(%x, @norm1.weight, eps=1e-05)",
        "  %p1.1: f32[1, t, 8] = linear(%n1.0, @proj1.weight)",
        "  %2: f32[1, t, 8] = add(%x, %p1.1)",
        "  %n2.3: f32[1, t, 8] = rms_norm(%2, @norm2.weight, eps=1e-05)",
        "  %p2.4: f32[1, t, 8] = linear(%n2.3, @proj2.weight)",
        "  %5: f32[1, t, 8] = add(%2, %p2.4)",
        "  return %5",
        "}",
    ])
    assert after == "\n".join([
        "func forward(%x: f32[1, t, 8]) {",
        "  %n1.0: f32[1, t, 8] = rms_norm(%x, @norm1.weight, eps=1e-05)",
        "  %p1.1: f32[1, t, 8] = linear(%n1.0, @proj1.weight)",
        "  %2: f32[1, t, 8], %n2.3: f32[1, t, 8] = add_rms_norm(%x, %p1.1, @norm2.weight, eps=1e-05)",
        "  %p2.4: f32[1, t, 8] = linear(%n2.3, @proj2.weight)",
        "  %5: f32[1, t, 8] = add(%2, %p2.4)",
        "  return %5",
        "}",
    ])


def test_broadcasting_add_is_not_fused():
    _, after = run(Block(broadcast=True))
    assert "add_rms_norm" not in after
    assert "  %3: f32[1, t, 8] = add(%2, @shift)" in after.splitlines()
    assert "  %n2.4: f32[1, t, 8] = rms_norm(%3, @norm2.weight, eps=1e-05)" in after.splitlines()
