"""ember's own CUDA device code (kernels/*.cuh), prepended to the source TVM generates before nvcc compiles it.

Lowerings such as native_gemv.py emit PrimFuncs whose kernels call `ember::<namespace>::...` device functions
(call_extern); TVM hands every kernel of a module to the nvcc hook as one source, so the definitions go in front
of it. A source is added only when the generated code names its namespace; a quoted `#include "x.cuh"` of another
kernels/ file is replaced by that file's text, once per source (nvcc gets no include path for them).
"""
from __future__ import annotations

import re
from pathlib import Path

KERNEL_DIR = Path(__file__).with_name("kernels")
# (what the generated code calls, the file that defines it)
SOURCES: tuple[tuple[str, str], ...] = (("ember::gemv::", "gemv.cuh"), ("ember::lowbatch::", "lowbatch.cuh"),
                                        ("ember::sample::", "sample.cuh"), ("ember::norm::", "norm.cuh"),
                                        ("ember::attn::", "decode_attention.cuh"),
                                        ("ember::linear::", "linear.cuh"), ("ember::kv::", "kv_append.cuh"),
                                        ("ember::prefill::", "prefill_attention.cuh"),
                                        ("ember::qgemm::", "prefill_qgemm.cuh"), ("ember::kgemv::", "kgemv.cuh"),
                                        ("ember::klowbatch::", "klowbatch.cuh"),
                                        ("ember::moe::", "moe.cuh"))


def needed_sources(code: str) -> list[str]:
    return [name for marker, name in SOURCES if marker in code]


_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([A-Za-z0-9_.]+)"[ \t]*$', re.MULTILINE)


def inlined(name: str, seen: set[str]) -> str:
    """kernels/`name` with its quoted includes of kernels/ files inlined (each file once across `seen`)."""
    seen.add(name)

    def include(m: re.Match[str]) -> str:
        dep = m.group(1)
        if not (KERNEL_DIR / dep).is_file():
            raise FileNotFoundError(f"{name}: #include \"{dep}\" is not a file of {KERNEL_DIR}")
        if dep in seen:
            return f"// {dep}: inlined above"
        line = m.string.count("\n", 0, m.end()) + 2  # the includer's line after the directive
        return f'#line 1 "{dep}"\n{inlined(dep, seen)}\n#line {line} "{name}"'

    return _LOCAL_INCLUDE.sub(include, (KERNEL_DIR / name).read_text(encoding="utf-8"))


def with_device_sources(code: str) -> str:
    """`code` with the definitions of the ember device functions it calls in front (unchanged if none)."""
    names = needed_sources(code)
    if not names:
        return code
    seen: set[str] = set()
    parts = [f'#line 1 "{name}"\n{inlined(name, seen)}' for name in names if name not in seen]
    return "\n".join(parts) + '\n#line 1 "tvm_kernels.cu"\n' + code


__all__ = ["KERNEL_DIR", "SOURCES", "needed_sources", "with_device_sources"]
