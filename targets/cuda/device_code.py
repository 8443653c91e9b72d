"""ember's own CUDA device code (kernels/*.cuh), prepended to the source TVM generates before nvcc compiles it.

Lowerings such as native_gemv.py emit PrimFuncs whose kernels call `ember::<namespace>::...` device functions
(call_extern); TVM hands every kernel of a module to the nvcc hook as one source, so the definitions go in front
of it. A source is added only when the generated code names its namespace.
"""
from __future__ import annotations

import re
from pathlib import Path

KERNEL_DIR = Path(__file__).with_name("kernels")
# (what the generated code calls, the file that defines it)
SOURCES: tuple[tuple[str, str], ...] = (("ember::gemv::", "gemv.cuh"), ("ember::lowbatch::", "lowbatch.cuh"),
                                        ("ember::sample::", "sample.cuh"), ("ember::norm::", "norm.cuh"),
                                        ("ember::attn::", "decode_attention.cuh"),
                                        ("ember::kv::", "kv_append.cuh"))
_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_]+\.cuh)"\s*$', re.MULTILINE)


def needed_sources(code: str) -> list[str]:
    return [name for marker, name in SOURCES if marker in code]


def with_device_sources(code: str) -> str:
    """`code` with the definitions of the ember device functions it calls in front (unchanged if none)."""
    names = needed_sources(code)
    if not names:
        return code
    seen: set[str] = set()
    parts = [_inlined(name, seen) for name in names]
    return "\n".join(parts) + '\n#line 1 "tvm_kernels.cu"\n' + code


def _inlined(name: str, seen: set[str]) -> str:
    """kernels/`name` with its quoted includes of other kernels/ files inlined (each file once: nvcc gets one
    source, no include path)."""
    if name in seen:
        return ""
    seen.add(name)

    def include(match: re.Match) -> str:
        if not (KERNEL_DIR / match.group(1)).is_file():
            return match.group(0)
        return f"{_inlined(match.group(1), seen)}\n#line 1 \"{name}\""  # line numbers restart; good enough

    return f'#line 1 "{name}"\n' + _INCLUDE.sub(include, (KERNEL_DIR / name).read_text(encoding="utf-8"))


__all__ = ["KERNEL_DIR", "SOURCES", "needed_sources", "with_device_sources"]
