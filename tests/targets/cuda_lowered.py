"""What the cuda lowering tests share: a tiny model lowered for cuda:sm_90 and the ember kernels its Relax
functions reach (read off TVMScript: 0.27's Python has no TIR visitor)."""
from __future__ import annotations

import re
from typing import Any

from ember.frontend.config import ModelConfig
from ember.frontend.models import build_module
from ember.passes.manager import PassManager, default_pipeline


def extern_calls(func: Any) -> list[str]:
    """Names a PrimFunc calls through call_extern."""
    return re.findall(r'T\.call_extern\("[a-z0-9]+", "([^"]+)"', func.script())


def through_cuda_pipeline(relax_mod: Any) -> Any:
    """`relax_mod` after ember's cuda Relax pipeline for sm_90 (kernels scheduled and swapped, not built)."""
    import tvm

    from ember.targets.cuda import pipeline

    target = pipeline.cuda_target(["sm_90"])
    with tvm.transform.PassContext(opt_level=3, config=pipeline.PASS_CONFIG):
        return pipeline.cuda_relax_pipeline(target)(relax_mod)


def calls_by_function(relax_mod: Any, prefix: str) -> dict[str, list[str]]:
    """Relax function -> the call_extern names starting with `prefix` that its call_tir's reach."""
    import tvm
    from tvm import relax

    prims = {gv.name_hint: f for gv, f in relax_mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    out: dict[str, list[str]] = {}
    for gv, func in relax_mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        calls: list[str] = []

        def visit(expr: Any, calls: list[str] = calls) -> None:
            if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
                calls.extend(n for n in extern_calls(prims[expr.args[0].name_hint]) if n.startswith(prefix))

        relax.analysis.post_order_visit(func.body, visit)
        out[gv.name_hint] = calls
    return out


def lowered(config: dict, scheme: str, dtype: str = "float16") -> Any:
    """The tiny model of `config` through the default passes of `scheme`, lowered for cuda:sm_90."""
    from ember.targets.cuda import CudaTarget
    from ember.targets.lower import lower

    module = PassManager(default_pipeline(scheme)).run(
        build_module(ModelConfig.from_dict(config), "tiny", dtype=dtype, static_decode=True))
    relax_mod, _ = lower(module, CudaTarget.parse("cuda:sm_90"))
    return relax_mod
