"""Programmatic dependent launch for ember's own cuda kernels: the TIR pipeline that tags them.

A decode step is a few hundred short kernels, and each one pays launch latency plus its ramp-up (~1.5-2.3 us
measured on an H200) before its first weight load. With the PDL launch attribute a kernel may start while the one
before it in the stream is finishing: its blocks load weights (which no kernel writes) and then
`ember::pdl::wait()` (kernels/pdl.cuh) for the predecessor's results. TVM's cuda runtime launches a kernel that
way when the launch-param tag `tirx.use_programtic_dependent_launch` (TVM's spelling) is in its
`tirx.kernel_launch_params`; this module's pass adds that tag, after TVM's own TIR pipeline, to the device
kernels that call a device function of `AWARE`: only kernels that wait() before touching anything another kernel
writes may start early. Stock TVM kernels keep plain launches, which wait for everything before them.

Tagged only when every arch of the build is sm_90 or newer (griddepcontrol is Hopper's) and EMBER_CUDA_PDL is not
"0" (A/B runs). Kernels tagged per artifact are listed by `tagged_kernels()` for tests.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .nvcc import sm_number

ENV = "EMBER_CUDA_PDL"
TAG = "tirx.use_programtic_dependent_launch"  # sic: TVM's launch_param::kUseProgramaticDependentLaunch
DYN_SHARED = "tirx.use_dyn_shared_memory"  # must stay the last tag
LAUNCH_PARAMS = "tirx.kernel_launch_params"
PIPELINE = "ember_cuda"
# device-function namespaces whose kernels follow the pdl.cuh contract (tests check each source calls wait())
AWARE = ("ember::gemv::", "ember::lowbatch::", "ember::norm::", "ember::attn::", "ember::linear::", "ember::kv::",
         "ember::prefill::", "ember::qgemm::", "ember::kgemv::", "ember::klowbatch::")


def enabled(archs: Sequence[str]) -> bool:
    return os.environ.get(ENV, "1") != "0" and bool(archs) and all(sm_number(a) >= 90 for a in archs)


def _calls_aware(func: Any) -> bool:
    """Whether a kernel's body evaluates a call_extern of an AWARE device function (how extern_kernel.launch
    writes them)."""
    import tvm
    from tvm import tirx

    from ..tir_walk import walk

    for node in walk(func.body):
        call = node.value if isinstance(node, tirx.Evaluate) else None
        if (isinstance(call, tvm.ir.Call) and call.op.name == "tirx.call_extern"
                and isinstance(call.args[0], tvm.ir.StringImm) and call.args[0].value.startswith(AWARE)):
            return True
    return False


def with_pdl_tag(params: Sequence[str]) -> list[str]:
    """Launch-param tags with TAG added (before the dynamic shared memory tag, which TVM needs last)."""
    tags = [str(p) for p in params]
    if TAG in tags:
        return tags
    at = len(tags) - 1 if tags and tags[-1] == DYN_SHARED else len(tags)
    return tags[:at] + [TAG] + tags[at:]


def tag_pass() -> Any:
    """Module pass: TAG on every device kernel that calls an AWARE device function."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="EmberTagProgrammaticLaunch")
    def run(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs is None or LAUNCH_PARAMS not in func.attrs:
                continue
            if _calls_aware(func):
                updates[gv] = func.with_attr(LAUNCH_PARAMS, with_pdl_tag(func.attrs[LAUNCH_PARAMS]))
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return run


def register_pipeline() -> str:
    """Registers PIPELINE (TVM's default TIR pipeline, then tag_pass) with TVM; returns its name."""
    import tvm
    from tvm.tirx import compilation_pipeline as tir_pipelines

    def factory() -> tuple[Any, Any, Any]:
        default, finalize_host, finalize_device = tir_pipelines.get_tir_pipeline("default")

        @tvm.transform.module_pass(opt_level=0, name="EmberCudaTIRPipeline")
        def pipeline(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
            return tag_pass()(default(mod))

        return pipeline, finalize_host, finalize_device

    tir_pipelines.register_tir_pipeline(PIPELINE, factory)
    return PIPELINE


def tagged_kernels(mod: Any) -> list[str]:
    """Names of the device kernels of a lowered TIR module that carry TAG."""
    from tvm import tirx

    return sorted(gv.name_hint for gv, f in mod.functions_items()
                  if isinstance(f, tirx.PrimFunc) and f.attrs is not None and LAUNCH_PARAMS in f.attrs
                  and TAG in [str(p) for p in f.attrs[LAUNCH_PARAMS]])


__all__ = ["AWARE", "ENV", "PIPELINE", "TAG", "enabled", "register_pipeline", "tag_pass", "tagged_kernels",
           "with_pdl_tag"]
