"""A Relax pass for the VM's instruction order: weights are taken out of the packed parameter tuple where they
are first used, not all at the top of a function.

An entry point gets the model's weights as one tuple (`packed_params`, 291 tensors for llama3-8b) and Relax binds
every element at the start of the function, so the VM runs ~290 `tuple_getitem` instructions before it launches
the first kernel. That host time sits between two decode steps, with the GPU idle (~100 us a step on an H200,
docs/measurements/2026-12-02-h200-session6-ab). Moved to just before their first use, the same instructions run
while the GPU is busy with the layers before. Only a `TupleGetItem` of a function parameter moves (pure, and
depending on nothing bound in the body); everything else keeps its place. Run it after RewriteCUDAGraph (which
gathers a graph region's inputs) and before KillAfterLastUse.
"""
from __future__ import annotations

from typing import Any

import tvm
from tvm import relax


def _param_item(binding: Any, params: set[Any]) -> bool:
    value = getattr(binding, "value", None)
    return (isinstance(binding, relax.VarBinding) and isinstance(value, relax.TupleGetItem)
            and isinstance(value.tuple_value, relax.Var) and value.tuple_value in params)


def _uses(binding: Any) -> list[Any]:
    return list(relax.analysis.free_vars(binding.value))


def sink_param_items(func: relax.Function) -> relax.Function:
    """`func` with each tuple_getitem of a parameter moved to just before the first binding that reads it."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return func
    params = set(func.params)
    pending: dict[Any, Any] = {}  # bound var -> its tuple_getitem binding, not placed yet
    for block in body.blocks:
        if isinstance(block, relax.DataflowBlock):
            return func  # inside a dataflow block the order is the compiler's business; nothing to do before lowering
        for binding in block.bindings:
            if _param_item(binding, params):
                pending[binding.var] = binding
    if not pending:
        return func
    blocks = []
    for block in body.blocks:
        bindings = []
        for binding in block.bindings:
            if _param_item(binding, params):
                continue
            for var in _uses(binding):
                item = pending.pop(var, None)
                if item is not None:
                    bindings.append(item)
            bindings.append(binding)
        blocks.append(relax.BindingBlock(bindings, block.span))
    tail = [pending.pop(var) for var in relax.analysis.free_vars(body.body) if var in pending]
    if tail:
        blocks[-1] = relax.BindingBlock(list(blocks[-1].bindings) + tail, blocks[-1].span)
    # never read: keep them (at the end), so the function's meaning and checks do not change
    if pending:
        blocks[-1] = relax.BindingBlock(list(blocks[-1].bindings) + list(pending.values()), blocks[-1].span)
    moved = relax.Function(func.params, relax.SeqExpr(blocks, body.body, body.span), func.ret_ty, func.is_pure,
                           func.attrs, func.span)
    return relax.BlockBuilder().normalize(moved)  # types of the new SeqExpr


@tvm.transform.module_pass(opt_level=0, name="ember.SinkParamItems")
def SinkParamItems(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:  # noqa: N802 (a pass)
    out = mod.clone()
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            new = sink_param_items(func)
            if not new.same_as(func):
                out.update_func(gv, new)
    return out


def with_sunk_param_items(finalize: list) -> list:
    """A backend's finalize passes with SinkParamItems after RewriteCUDAGraph (or, without it, before
    KillAfterLastUse)."""
    names = [p.info.name for p in finalize]
    at = names.index("RewriteCUDAGraph") + 1 if "RewriteCUDAGraph" in names else names.index("KillAfterLastUse")
    return finalize[:at] + [SinkParamItems] + finalize[at:]
