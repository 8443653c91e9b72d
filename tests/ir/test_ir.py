"""The IR on hand-built graphs: tracing, type rules, printer, verifier."""
import pytest

from ember.frontend.layers import Linear, RMSNorm
from ember.ir import functional as F
from ember.ir.builder import Module, TraceError, trace
from ember.ir.printer import format_module
from ember.ir.types import TensorType
from ember.ir.verifier import VerifyError, verify


class Block(Module):
    def __init__(self):
        self.norm = RMSNorm(8, 1e-5, "float32")
        self.up = Linear(8, 16, bias=False, dtype="float32")
        self.down = Linear(16, 8, bias=True, dtype="float32")

    def forward(self, x):
        return x + self.down(F.silu(self.up(self.norm(x, name="n"), name="u")), name="d")


def traced():
    return trace(Block(), {"forward": {"x": TensorType((1, "total_len", 8), "float32")}}, name="block")


def test_trace_names_parameters_by_attribute_path_and_infers_types():
    module = traced()
    assert list(module.params) == ["norm.weight", "up.weight", "down.weight", "down.bias"]
    fn = module.functions["forward"]
    assert [n.op for n in fn.nodes] == ["rms_norm", "linear", "silu", "linear", "add"]
    assert fn.outputs[0].type == TensorType((1, "total_len", 8), "float32")
    verify(module)


def test_printer_is_stable_text():
    text = format_module(traced())
    assert text == format_module(traced())
    assert "param @down.bias: f32[8]" in text
    assert "%u.1: f32[1, total_len, 16] = linear(%n.0, @up.weight)" in text
    assert "return %4" in text


def test_shape_errors_name_the_op_and_shapes():
    class Bad(Module):
        def __init__(self):
            self.proj = Linear(4, 4, bias=False, dtype="float32")

        def forward(self, x):
            return self.proj(x)

    with pytest.raises(TraceError, match=r"linear\(%x: f32\[1, 3, 8\].*K=8.*K=4"):
        trace(Bad(), {"forward": {"x": TensorType((1, 3, 8), "float32")}}, name="bad")


def test_verifier_names_node_and_shapes():
    module = traced()
    node = module.functions["forward"].nodes[1]
    node.inputs[1].type = TensorType((16, 9), "float32")
    with pytest.raises(VerifyError, match=r"forward: node 1 \(linear -> %u.1\).*typed f32\[16, 9\]"):
        verify(module)


def test_verifier_rejects_use_before_definition():
    module = traced()
    fn = module.functions["forward"]
    fn.nodes[0], fn.nodes[1] = fn.nodes[1], fn.nodes[0]
    with pytest.raises(VerifyError, match="before it is defined"):
        verify(module)


def test_reshape_keeps_symbols_and_counts():
    class R(Module):
        def forward(self, x):
            return x.reshape(1, "total_len", 2, 4)

    module = trace(R(), {"forward": {"x": TensorType((1, "total_len", 8), "float32")}}, name="r")
    assert module.functions["forward"].outputs[0].type.shape == (1, "total_len", 2, 4)

    class Wrong(Module):
        def forward(self, x):
            return x.reshape(1, "total_len", 3, 4)

    with pytest.raises(TraceError, match="element counts differ"):
        trace(Wrong(), {"forward": {"x": TensorType((1, "total_len", 8), "float32")}}, name="w")


def test_attention_checks_gqa_ratio():
    class A(Module):
        def forward(self, q, k):
            return F.paged_attention(q, k, k, layer=0, sm_scale=0.5)

    spec = {"forward": {"q": TensorType((1, "t", 3, 8), "float32"), "k": TensorType((1, "t", 2, 8), "float32")}}
    with pytest.raises(TraceError, match="not a multiple of 2 kv heads"):
        trace(A(), spec, name="a")
