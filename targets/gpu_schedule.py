"""Schedule rules shared by the GPU targets (cuda, metal): dlight rule lists chosen per PrimFunc.

A kernel of a prefill function (many rows) wants a tiled Matmul first; every other kernel (decode, few rows) wants
GEMV / LowBatchGEMV first. Which kernels are prefill kernels is read from the signature: it uses one of the
token-count dims of the prefill entry point, which lower() records on the IRModule (PREFILL_DIMS_ATTR), so no
target knows the frontend's symbol names.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tvm
    from tvm.s_tir.dlight import ScheduleRule

PREFILL_DIMS_ATTR = "ember_prefill_dims"  # IRModule attribute: the prefill entry point's token-count dims


def prefill_dims(mod: tvm.IRModule) -> tuple[str, ...]:
    dims = mod.attrs.get(PREFILL_DIMS_ATTR) if mod.attrs is not None else None
    return tuple(str(d) for d in dims) if dims is not None else ()


def symbolic_dims(func: tvm.tirx.PrimFunc) -> set[str]:
    """Names of the free variables in a PrimFunc's buffer shapes and scalar (shape) parameters."""
    from tvm import tirx

    names: set[str] = set()
    for param in func.params:
        # TVM 0.27: a buffer parameter is a Var typed BufferType; a scalar one is a shape var itself.
        if not isinstance(param.ty, tirx.buffer.BufferType):
            names.add(param.name)
            continue
        for dim in param.shape:
            names.update(v.name for v in tirx.analysis.undefined_vars(dim))
    return names


def is_prefill_kernel(func: tvm.tirx.PrimFunc, dims: Iterable[str]) -> bool:
    """A kernel of a prefill function: its signature uses a prefill token-count dim."""
    return not symbolic_dims(func).isdisjoint(dims)


def schedule_per_function(prefill_rules: Sequence[ScheduleRule], decode_rules: Sequence[ScheduleRule],
                          name: str) -> tvm.transform.Pass:
    """Like dlight's ApplyDefaultSchedule, with the rule list picked per PrimFunc (first rule that applies wins)."""
    import tvm
    from tvm import tirx

    rule_sets = {True: list(prefill_rules), False: list(decode_rules)}

    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=False)
        dims = prefill_dims(mod)
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
                continue
            func_target = func.attrs.get("target", target)
            for rule in rule_sets[is_prefill_kernel(func, dims)]:
                space = rule.apply(func, func_target, False)
                if space is None:
                    continue
                sch = space if not isinstance(space, list) else space[0]
                updates[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                break
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return tvm.transform.module_pass(transform, opt_level=0, name=name)


def gpu_relax_pipeline(target: tvm.target.Target, backend: Any, prefill_rules: Sequence[ScheduleRule],
                       decode_rules: Sequence[ScheduleRule], name: str, after_schedule: Sequence[Any] = (),
                       error: type[Exception] = RuntimeError) -> tvm.transform.Pass:
    """A TVM backend's phases (`backend`: e.g. tvm.relax.backend.cuda.pipeline) with FuseTransposeMatmul first and
    its one stock dlight ApplyDefaultSchedule replaced by `schedule_per_function`; `after_schedule` passes follow
    legalization (checks of the scheduled kernels)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    from .shape_func_order import canonical_shape_functions, merged_shape_functions
    from .vm_order import with_sunk_param_items

    legalize = backend.legalize_passes(target)
    stock = [p for p in legalize if isinstance(p, dl.ApplyDefaultSchedule)]
    if len(stock) != 1:
        raise error(f"{backend.__name__}.legalize_passes changed: expected exactly one dlight "
                    f"ApplyDefaultSchedule, found {len(stock)}")
    legalize = [p for p in legalize if not isinstance(p, dl.ApplyDefaultSchedule)]
    legalize.append(schedule_per_function(prefill_rules, decode_rules, f"{name}.SchedulePerFunction"))
    passes = ([relax.transform.FuseTransposeMatmul()] + backend.library_dispatch_passes(target) + legalize
              + list(after_schedule) + backend.dataflow_lower_passes(target)
              + with_sunk_param_items(backend.finalize_passes(target))
              + [canonical_shape_functions(), merged_shape_functions()])  # reproducible builds (shape_func_order.py)

    def run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return tvm.transform.module_pass(run, opt_level=0, name=f"{name}.RelaxPipeline")


__all__ = ["PREFILL_DIMS_ATTR", "gpu_relax_pipeline", "is_prefill_kernel", "prefill_dims", "schedule_per_function", "symbolic_dims"]
