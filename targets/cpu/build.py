"""The cpu build: LLVM for the build machine's architecture (or a cross arch, arch.py) plus ember's native kernels
(native/*.c)."""
from __future__ import annotations

import os
import platform
from collections.abc import Callable

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.s_tir import dlight as dl

from ..shape_func_order import canonical_shape_functions, merged_shape_functions
from ...runtime.artifact import TargetInfo
from . import native, native_elementwise, native_linear, native_moe
from .arch import MCPU_ENV, CrossArch, build_machine, mcpu_override  # noqa: F401  (MCPU_ENV: re-exported)
from .attention import replace_decode_attention, replace_prefill_attention, replace_rope_split
from .elementwise_schedule import Elementwise
from .matmul_schedule import Matmul


def _host_x86_level() -> str | None:
    """The highest x86-64 micro-architecture level (psABI v3/v4) this Linux host supports, or None."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return None
    have = set(flags)
    v3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"} | ({"abm"} if "abm" in have else {"lzcnt"})
    v4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    if not v3 <= have:
        return None
    return "x86-64-v4" if v4 <= have else "x86-64-v3"


def cpu_target(arch: CrossArch | None = None) -> tvm.target.Target:
    """LLVM for the build machine: on x86-64 the host's psABI level (v3 = AVX2+FMA+F16C, v4 = AVX-512), since
    LLVM's default x86-64 baseline has neither FMA nor 256-bit vectors (artifacts then need such a cpu:
    target_info records it). `EMBER_CPU_MCPU` overrides: `generic` for a portable artifact, or an LLVM cpu
    name such as `znver3`. For a cross `arch` (cpu:aarch64): its triple and baseline features, or the LLVM cpu
    `EMBER_CPU_MCPU` names."""
    if arch is not None:
        mcpu = mcpu_override()
        attrs = {"mtriple": arch.triple, "mattr": list(arch.mattr)}
        return tvm.target.Target({"kind": "llvm", **attrs, **({"mcpu": mcpu} if mcpu and mcpu != "generic" else {})})
    mcpu = mcpu_override() or _host_x86_level()
    return tvm.target.Target({"kind": "llvm", **({"mcpu": mcpu} if mcpu and mcpu != "generic" else {})})


def _mcpu(target: tvm.target.Target) -> str | None:
    return str(target.attrs.get("mcpu", "") or "") or None


def target_info(arch: CrossArch | None = None) -> TargetInfo:
    """archs: the machine, then the LLVM cpu the kernels need (e.g. x86-64-v3: AVX2 + FMA), if any; for a cross
    arch the LLVM cpu EMBER_CPU_MCPU named, else the arch's baseline (armv8-a: NEON, nothing later)."""
    mcpu = _mcpu(cpu_target(arch))
    if arch is not None:
        return TargetInfo(kind="cpu", archs=[arch.name, mcpu or arch.baseline], host=arch.triple)
    return TargetInfo(kind="cpu", archs=[build_machine()] + ([mcpu] if mcpu else []),
                      host=str(cpu_target().attrs.get("mtriple", "")))


def cpu_lowerings() -> dict:
    """The cpu target's own lowerings (lower.lower's overrides): linear layers, SwiGLU and norms on the native
    kernels."""
    return {**native_linear.LOWERINGS, **native_elementwise.LOWERINGS, **native_moe.LOWERINGS}


def schedule_rules() -> list:
    """The dlight-style rules applied, first match wins, to every PrimFunc of a cpu build."""
    return [Matmul(), dl.cpu.GEMV(), dl.cpu.Reduction(), Elementwise()]


def _pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's cpu pipeline plus ember's NT-matmul schedule (matmul_schedule.py: register-blocked, vectorized,
    parallel; symbolic or static m), dlight's cpu GEMV/reduction schedules, a parallel vectorized schedule for
    elementwise kernels (elementwise_schedule.py), and a parallel vectorized ragged-prefill attention kernel in
    place of the KV cache's serial one (attention.py)."""

    @tvm.transform.module_pass(opt_level=0)
    def run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                [relax.transform.FuseTransposeMatmul()]
                + cpu_pipeline.library_dispatch_passes(target)
                + cpu_pipeline.legalize_passes(target)
                + [replace_prefill_attention, replace_decode_attention, replace_rope_split,
                   dl.ApplyDefaultSchedule(*schedule_rules())]
                + cpu_pipeline.dataflow_lower_passes(target)
                + cpu_pipeline.finalize_passes(target)
                + [canonical_shape_functions(), merged_shape_functions()]  # reproducible builds (shape_func_order.py)
            )
            return seq(mod)

    return run


class CpuLibrary:
    """A cpu build: TVM's executable plus ember's native kernels (native.py), linked together on export by the
    system linker (`fcompile` None) or by zig for a cross arch."""

    def __init__(self, executable: tvm.runtime.Executable, objects: list[str],
                 fcompile: Callable[..., None] | None = None) -> None:
        self.executable = executable
        self.objects = objects
        self.fcompile = fcompile

    def export_library(self, path: str) -> None:
        # a copy: export_library appends its own objects to the addons list it is given
        extra = {"fcompile": self.fcompile} if self.fcompile is not None else {}
        self.executable.export_library(str(path), addons=list(self.objects), **extra)

    def load(self) -> tvm.runtime.Module:
        """The library, exported to a temporary folder and loaded (in-process use: tests, tools)."""
        import tempfile

        if self.fcompile is not None:
            raise RuntimeError("a cross-built cpu library cannot be loaded on the build machine")
        with tempfile.TemporaryDirectory(prefix="ember-cpu-") as folder:  # a loaded library outlives its file
            path = os.path.join(folder, "model.so")
            self.export_library(path)
            return tvm.runtime.load_module(path)


def build_cpu(mod: tvm.IRModule, arch: CrossArch | None = None) -> CpuLibrary:
    """tvm.compile for the build machine, or for `arch` (C kernels and link by zig for arch.zig_target)."""
    target = cpu_target(arch)
    if arch is None:
        return CpuLibrary(tvm.compile(mod, target=target, relax_pipeline=_pipeline(target)),
                          native.native_objects(_mcpu(target)))
    from ..zig import exporter

    objects = native.native_objects(_mcpu(target), zig_target=arch.zig_target)
    executable = tvm.compile(mod, target=target, relax_pipeline=_pipeline(target))
    return CpuLibrary(executable, objects, exporter(arch.zig_target, ["-lm"]))
