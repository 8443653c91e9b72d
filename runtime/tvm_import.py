"""Import the TVM runtime without side effects: no torch, and the CUDA runtime only when asked for.

`import tvm_ffi` tries `import torch` (+6 s and +480 MB on a GPU box, guide tvm-core §0.5). A process that has not
imported torch itself gets it blocked for the duration of `import tvm` only; the entry is removed right after, so
the process can still import torch later. A process that already imported torch is left alone.

In runtime-only mode (`TVM_USE_RUNTIME_LIB=1`, or no libtvm_compiler.so) TVM does not load its CUDA sidecar;
`ensure_device_runtime("cuda")` loads `libtvm_runtime_cuda.so` itself (RTLD_LOCAL: it only registers functions
in libtvm_ffi's global registry, nothing needs its symbols).
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from types import ModuleType

from ..errors import ArtifactError

_loaded_sidecars: dict[str, ctypes.CDLL] = {}  # keep the handles alive for the life of the process


def import_tvm() -> ModuleType:
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    block_torch = "torch" not in sys.modules
    if block_torch:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import tvm
    finally:
        if block_torch and "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return tvm


def ensure_device_runtime(kind: str) -> None:
    """Make sure TVM's runtime for `kind` ("cpu" | "cuda" | "metal") is registered, loading the sidecar if needed."""
    tvm = import_tvm()
    if kind == "cpu" or tvm.runtime.enabled(kind):
        return
    if kind == "cuda":
        lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
        if not lib.is_file():
            raise ArtifactError(f"this TVM install has no CUDA runtime ({lib} is missing)")
        try:
            _loaded_sidecars[kind] = ctypes.CDLL(str(lib), mode=ctypes.RTLD_LOCAL)
        except OSError as err:
            raise ArtifactError(
                f"cannot load TVM's CUDA runtime ({err}); it needs libcudart.so.13 and an NVIDIA driver"
            ) from None
        if tvm.runtime.enabled("cuda"):
            return
    raise ArtifactError(f"this TVM install cannot run on {kind} (tvm.runtime.enabled({kind!r}) is False)")
