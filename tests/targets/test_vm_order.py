"""targets/vm_order.py: a weight leaves the packed parameter tuple just before its first use (the VM then launches
the first kernel of a step after a handful of instructions, not after one per weight)."""
from __future__ import annotations

from tvm import relax
from tvm.relax.type import TensorType, TupleType

from ember.targets.vm_order import SinkParamItems, sink_param_items, with_sunk_param_items


def _function() -> relax.Function:
    """f(x, params = (a, b, c)) -> (x + a) * b; every item bound first, c never read."""
    tensor = TensorType([4], "float32")
    x = relax.Var("x", tensor)
    params = relax.Var("params", TupleType([tensor, tensor, tensor]))
    bb = relax.BlockBuilder()
    with bb.function("f", [x, params]):
        a, b, _ = (bb.emit(relax.TupleGetItem(params, i)) for i in range(3))
        y = bb.emit(relax.op.add(x, a))
        z = bb.emit(relax.op.multiply(y, b))
        bb.emit_func_output(z)
    return bb.get()["f"]


def _order(func: relax.Function) -> list[str]:
    out = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            out.append(f"item{value.index}" if isinstance(value, relax.TupleGetItem) else value.op.name)
    return out


def test_items_move_to_their_first_use():
    func = _function()
    assert _order(func) == ["item0", "item1", "item2", "relax.add", "relax.multiply"]
    moved = sink_param_items(func)
    assert _order(moved) == ["item0", "relax.add", "item1", "relax.multiply", "item2"]
    import numpy as np
    import tvm

    vm = relax.VirtualMachine(tvm.compile(tvm.IRModule({"f": moved}), target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    x, a, b, c = (np.arange(4, dtype="float32") + i for i in range(4))
    out = vm["f"](tvm.runtime.tensor(x), tuple(tvm.runtime.tensor(v) for v in (a, b, c)))
    np.testing.assert_array_equal(out.numpy(), (x + a) * b)


def test_the_module_pass_leaves_other_functions_alone():
    import tvm

    mod = tvm.IRModule({"f": _function()})
    out = SinkParamItems(mod)
    assert _order(out["f"]) == ["item0", "relax.add", "item1", "relax.multiply", "item2"]
    assert _order(mod["f"])[:3] == ["item0", "item1", "item2"]  # the input module is not changed


def test_pipeline_position():
    import tvm
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.relax.backend.gpu_generic import pipeline as generic

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    names = [p.info.name for p in with_sunk_param_items(cuda.finalize_passes(target))]
    assert names[names.index("RewriteCUDAGraph") + 1] == "ember.SinkParamItems"
    names = [p.info.name for p in with_sunk_param_items(generic.finalize_passes(None))]
    assert names[names.index("KillAfterLastUse") - 1] == "ember.SinkParamItems"
