"""Metal's per-threadgroup limits, checked on what a build produces (no Apple tool needed).

- Threads per threadgroup (1024 on apple/m1-gpu): read from the scheduled TIR, the product of the largest
  threadIdx.x/y/z extents of each kernel (the MSL does not state them; the host passes them at dispatch).
- Threadgroup memory (32 KB): the `threadgroup T name[N];` arrays each MSL kernel declares.
- Vector types: MSL has vectors of 2, 3 and 4 lanes only; a wider one (`half8`) would not compile on a Mac.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..tir_walk import walk
from . import MetalBuildError

if TYPE_CHECKING:
    import tvm

THREAD_TAGS = ("threadIdx.x", "threadIdx.y", "threadIdx.z")
SCALAR_BYTES = {"bool": 1, "char": 1, "uchar": 1, "short": 2, "ushort": 2, "half": 2, "bfloat": 2, "int": 4,
                "uint": 4, "float": 4, "long": 8, "ulong": 8}
_WIDE_VECTOR = re.compile(r"\b(?:" + "|".join(SCALAR_BYTES) + r")(?:[5-9]|[1-9]\d+)\b")
_THREADGROUP_ARRAY = re.compile(r"\bthreadgroup\s+(\w+?)([234])?\s+(\w+)\s*\[\s*(\d+)\s*\]\s*;")
_FUNCTION = re.compile(r"^// Function: (\S+)", re.M)


def thread_extents(func: tvm.tirx.PrimFunc) -> dict[str, int | None]:
    """The largest extent of each threadIdx binding in a PrimFunc (None: not a constant)."""
    from tvm import tirx

    extents: dict[str, int | None] = {}

    def note(tag: str, extent) -> None:
        if tag not in THREAD_TAGS:
            return
        value = int(extent.value) if isinstance(extent, tirx.IntImm) else None
        old = extents.get(tag, 0)
        extents[tag] = None if value is None or old is None else max(old, value)

    for node in walk(func.body):
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.THREAD_BINDING and node.thread_binding is not None:
            note(str(node.thread_binding.thread_tag), node.extent)
        elif isinstance(node, tirx.AttrStmt) and node.attr_key == "thread_extent":
            note(str(node.node.thread_tag), node.value)
    return extents


def threadgroup_size(func: tvm.tirx.PrimFunc) -> int | None:
    extents = thread_extents(func)
    if any(v is None for v in extents.values()):
        return None
    size = 1
    for value in extents.values():
        size *= value
    return size


def check_threadgroups(target: tvm.target.Target) -> tvm.transform.Pass:
    """A module pass that raises MetalBuildError if a kernel's threadgroup exceeds the target's limit."""
    import tvm
    from tvm import tirx

    limit = int(target.attrs["max_threads_per_block"])

    def run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            size = threadgroup_size(func)
            if size is None:
                raise MetalBuildError(f"kernel {gvar.name_hint}: threadgroup size is not a constant "
                                      f"({thread_extents(func)}), so the {limit}-thread limit cannot be checked")
            if size > limit:
                raise MetalBuildError(f"kernel {gvar.name_hint}: {size} threads per threadgroup, "
                                      f"metal allows {limit}")
        return mod

    return tvm.transform.module_pass(run, opt_level=0, name="ember.metal.CheckThreadgroups")


@dataclass
class MslLimits:
    kernels: int = 0
    threadgroup_bytes: dict[str, int] = field(default_factory=dict)  # per kernel that declares any
    wide_vectors: dict[str, list[str]] = field(default_factory=dict)  # kernel -> the wide vector types it uses

    @property
    def max_threadgroup_bytes(self) -> int:
        return max(self.threadgroup_bytes.values(), default=0)

    def problems(self, threadgroup_limit: int) -> list[str]:
        out = [f"kernel {k}: vector type(s) {', '.join(v)} (MSL vectors have at most 4 lanes)"
               for k, v in self.wide_vectors.items()]
        out += [f"kernel {k}: {b} bytes of threadgroup memory, metal allows {threadgroup_limit}"
                for k, b in self.threadgroup_bytes.items() if b > threadgroup_limit]
        return out


def split_kernels(source: str) -> dict[str, str]:
    """MSL of a metal module (inspect_source) -> {kernel name: its translation unit}."""
    heads = list(_FUNCTION.finditer(source))
    return {m.group(1): source[m.start():(heads[i + 1].start() if i + 1 < len(heads) else len(source))]
            for i, m in enumerate(heads)}


def msl_limits(kernels: dict[str, str]) -> MslLimits:
    report = MslLimits(kernels=len(kernels))
    for name, text in kernels.items():
        wide = sorted(set(_WIDE_VECTOR.findall(text)))
        if wide:
            report.wide_vectors[name] = wide
        total = 0
        for scalar, lanes, _array, count in _THREADGROUP_ARRAY.findall(text):
            if scalar not in SCALAR_BYTES:
                raise MetalBuildError(f"kernel {name}: threadgroup array of unknown type {scalar}{lanes}")
            total += SCALAR_BYTES[scalar] * int(lanes or 1) * int(count)
        if total:
            report.threadgroup_bytes[name] = total
    return report


__all__ = ["MslLimits", "check_threadgroups", "msl_limits", "split_kernels", "thread_extents", "threadgroup_size"]
