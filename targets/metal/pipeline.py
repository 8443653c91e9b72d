"""Relax/TIR pipeline for metal: TVM's gpu_generic phases with Metal-suited dlight rules chosen per PrimFunc.

- FuseTransposeMatmul first (linear layers read W[n, k] in place, as on cuda), then gpu_generic's library
  dispatch, legalization, dataflow lowering and finalization; its stock ApplyDefaultSchedule is replaced by
  gpu_schedule.schedule_per_function with the lists below.
- Prefill kernels: SimdgroupMatmul (simdgroup 8x8 matrices, float32 accumulation, simdgroup.py), then
  dl.gpu.Matmul (dlight's own float16-accumulation MetalMatmul inside it, else its tiled path), then the GEMV,
  reduction and fallback rules. Decode kernels: GEMV, LowBatchGEMV first.
- Never dl.gpu.RMSNorm: it vectorizes float16 by 8, and MSL vectors are at most 4 wide (tvm-metal.md §2).
- TIR CSE off: it breaks the paged KV cache's kernels on metal too (`cse_v21 has been used before definition`).
- After scheduling, every kernel's threadgroup is checked against the target's limit (limits.py).

`metal_rules(portable=True)` gives the same lists for another GPU target (the numerics check on cuda,
tools/metal_rules_on_cuda.py): every rule schedules as for Apple GPUs, and nothing Metal-only is emitted:
SimdgroupMatmul runs emulated (its tiles in local memory, the intrinsics as plain loops), and a dl.gpu.Matmul
result on simdgroup matrices is refused.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..gpu_schedule import gpu_relax_pipeline
from . import TVM_TAG, MetalBuildError

if TYPE_CHECKING:
    import tvm
    from tvm.runtime import Executable
    from tvm.s_tir.dlight import ScheduleRule

PASS_CONFIG = {"tirx.disable_cse_tir": True}


def metal_target() -> tvm.target.Target:
    """Apple M1 and later: simdgroups of 32, 1024 threads and 32 KB per threadgroup, host arm64-apple-macos."""
    import tvm

    return tvm.target.Target(TVM_TAG)


@dataclass(frozen=True)
class MetalRules:
    prefill: list[ScheduleRule]
    decode: list[ScheduleRule]


def metal_rules(portable: bool = False) -> MetalRules:
    """The dlight rule lists of metal builds; `portable`: for another GPU target, without Metal-only constructs."""
    from tvm.s_tir import dlight as dl

    from .simdgroup import SimdgroupMatmul

    tail = [dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    prefill = [SimdgroupMatmul(emulate=portable), dl.gpu.Matmul(), dl.gpu.GEMV(), *tail]
    decode = [dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Matmul(), *tail]
    if not portable:
        return MetalRules(prefill, decode)
    from .portable import as_on_metal

    return MetalRules(as_on_metal(prefill), as_on_metal(decode))


def metal_relax_pipeline(target: tvm.target.Target, rules: MetalRules | None = None) -> tvm.transform.Pass:
    from tvm.relax.backend.gpu_generic import pipeline as generic

    from .limits import check_threadgroups

    rules = rules or metal_rules()
    return gpu_relax_pipeline(target, generic, rules.prefill, rules.decode, "ember.metal",
                              after_schedule=[check_threadgroups(target)], error=MetalBuildError)


def build_metal(mod: tvm.IRModule, rules: MetalRules | None = None) -> Executable:
    """Compile a Relax module for Apple GPUs: arm64 host code, every kernel as MSL source."""
    import tvm

    from ..tvmscript import preload_tensor_intrinsics

    target = metal_target()
    preload_tensor_intrinsics()
    with target, tvm.transform.PassContext(opt_level=3, config=PASS_CONFIG):
        return tvm.compile(mod, target=target, relax_pipeline=metal_relax_pipeline(target, rules),
                           tir_pipeline="default")


def metal_modules(executable: Executable) -> Sequence[tvm.runtime.Module]:
    """The `metal` modules (MSL source) in an executable's module tree."""
    found, todo = [], [executable.mod]
    while todo:
        module = todo.pop()
        if module.kind == "metal":
            found.append(module)
        todo.extend(module.imports)
    return found


__all__ = ["MetalRules", "PASS_CONFIG", "build_metal", "metal_modules", "metal_relax_pipeline", "metal_rules",
           "metal_target"]
