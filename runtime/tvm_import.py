"""Import TVM's runtime alone, fast, and without side effects on the caller's process.

`import_tvm()` is how every runtime module reaches TVM. When the process has not imported tvm yet:
- it loads TVM's runtime library only (`TVM_USE_RUNTIME_LIB=1` for the duration of `import tvm`; the variable is
  restored afterwards, and a value the caller set is respected: `TVM_USE_RUNTIME_LIB=0` gives the full compiler);
- `import torch` is blocked during `import tvm` (tvm_ffi tries it: +6 s and +480 MB on a GPU box) unless the
  process imported torch itself;
- in runtime-only mode `ml_dtypes` (~0.9 s of the ~1.3 s import, imported by tvm_ffi for bfloat16/float8 numpy
  conversions) is deferred: TVM gets a stand-in that imports it on first use (`ensure_ml_dtypes`);
- registering TVM's Python classes looks up the compiler's type keys too; in runtime-only mode each lookup of a
  missing key throws inside libtvm_ffi, and the first throw costs ~0.2 s (libbacktrace reads the debug info).
  Keys the registry does not hold are answered "unknown" without the throw, exactly what the lookup returns.
Each of these is undone right after `import tvm`, so the process can import torch or ml_dtypes later as usual.

A process that already imported tvm with its compiler keeps it as is: ember says so once (a warning) and runs
on it. Such a process cannot drop the compiler; compile in one process and run in another to avoid that.

In runtime-only mode TVM does not load its device sidecars; `ensure_device_runtime("cuda")` loads
`libtvm_runtime_cuda.so` itself, `ensure_device_runtime("metal")` `libtvm_runtime_metal.dylib` (macOS wheels)
(RTLD_LOCAL: they only register functions in libtvm_ffi's global registry).
"""
from __future__ import annotations

import ctypes
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ArtifactError, CompilerLoadedWarning

RUNTIME_ONLY_ENV = "TVM_USE_RUNTIME_LIB"
COMPILER_NOTE = "tvm was already imported with its compiler; ember uses it as is"

_loaded_sidecars: dict[str, ctypes.CDLL] = {}  # keep the handles alive for the life of the process
_noted_compiler = False


def import_tvm() -> ModuleType:
    tvm = sys.modules.get("tvm")
    if tvm is not None:
        _note_compiler(tvm)
        return tvm
    with ExitStack() as stack:
        runtime_only = stack.enter_context(_runtime_only_env())
        stack.enter_context(_blocked("torch"))
        deferred = runtime_only and stack.enter_context(_blocked("ml_dtypes"))
        if runtime_only:
            stack.enter_context(_known_type_keys_only())
        import tvm
    if deferred:
        tvm.runtime._tensor.ml_dtypes = _LazyMLDtypes("ml_dtypes")
    return tvm


def import_tvm_with_compiler() -> ModuleType:
    """For `ember compile`: tvm with its compiler library, torch blocked during the import as for the runtime
    (tvm_ffi's optional `import torch` costs 2-4 s and nothing ember compiles uses it)."""
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    with _blocked("torch"):
        import tvm
    return tvm


def runtime_only(tvm: ModuleType | None = None) -> bool:
    """Whether TVM was (or will be, by import_tvm) loaded without its compiler library."""
    tvm = tvm or sys.modules.get("tvm")
    if tvm is None:
        return os.environ.get(RUNTIME_ONLY_ENV, "1") == "1"
    return bool(getattr(getattr(tvm, "base", None), "_RUNTIME_ONLY", False))


def ensure_ml_dtypes() -> ModuleType:
    """Import ml_dtypes (numpy's bfloat16/float8 types) and register its dtypes with tvm_ffi, as tvm_ffi does."""
    real = importlib.import_module("ml_dtypes")
    tvm_ffi = sys.modules.get("tvm_ffi")
    if tvm_ffi is not None:
        import numpy as np

        for name in _ML_DTYPE_NAMES:
            if hasattr(real, name):
                tvm_ffi.dtype._NUMPY_DTYPE_TO_STR.setdefault(np.dtype(getattr(real, name)), name)
    tvm = sys.modules.get("tvm")
    if tvm is not None and isinstance(getattr(tvm.runtime._tensor, "ml_dtypes", None), _LazyMLDtypes):
        tvm.runtime._tensor.ml_dtypes = real
    return real


_ML_DTYPE_NAMES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1fn")


class _LazyMLDtypes(ModuleType):
    """Stands in for ml_dtypes inside tvm.runtime._tensor until a bfloat16/float8 conversion needs it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ensure_ml_dtypes(), name)


def _note_compiler(tvm: ModuleType) -> None:
    global _noted_compiler
    if not _noted_compiler and not runtime_only(tvm):
        _noted_compiler = True
        warnings.warn(COMPILER_NOTE, CompilerLoadedWarning, stacklevel=3)


@contextmanager
def _runtime_only_env() -> Iterator[bool]:
    """TVM_USE_RUNTIME_LIB=1 while tvm imports (TVM reads it only then), unless the caller set it."""
    if RUNTIME_ONLY_ENV in os.environ:
        yield os.environ[RUNTIME_ONLY_ENV] == "1"
        return
    os.environ[RUNTIME_ONLY_ENV] = "1"
    try:
        yield True
    finally:
        os.environ.pop(RUNTIME_ONLY_ENV, None)


@contextmanager
def _blocked(module: str) -> Iterator[bool]:
    """`import module` raises ImportError inside the block, unless the process imported it already."""
    if module in sys.modules:
        yield False
        return
    sys.modules[module] = None  # type: ignore[assignment]
    try:
        yield True
    finally:
        if module in sys.modules and sys.modules[module] is None:
            del sys.modules[module]


@contextmanager
def _known_type_keys_only() -> Iterator[None]:
    """Answer lookups of type keys the registry does not hold with None (what the lookup returns) without letting
    libtvm_ffi throw: its first exception initialises libbacktrace, ~0.2 s."""
    import tvm_ffi

    core = tvm_ffi.core
    original = getattr(core, "_object_type_key_to_index", None)
    listed = tvm_ffi.get_global_func("ffi.GetRegisteredTypeKeys", allow_missing=True)
    if original is None or listed is None:
        yield
        return
    known: set[str] = set()

    def lookup(type_key: str) -> int | None:
        if type_key not in known:
            keys = listed()  # libraries register their types as they load: refresh when the count grew
            if len(keys) != len(known):
                known.clear()
                known.update(str(k) for k in keys)
            if type_key not in known:
                return None
        return original(type_key)

    core._object_type_key_to_index = lookup
    try:
        yield
    finally:
        core._object_type_key_to_index = original


# device kind -> TVM's runtime sidecar for it (loaded RTLD_LOCAL: it only registers functions in libtvm_ffi's registry)
SIDECARS = {"cuda": ("CUDA", "libtvm_runtime_cuda.so", "it needs libcudart.so.13 and an NVIDIA driver"),
            "metal": ("Metal", "libtvm_runtime_metal.dylib", "it needs macOS with Metal")}


def ensure_device_runtime(kind: str) -> None:
    """Make sure TVM's runtime for `kind` ("cpu" | "cuda" | "metal") is registered, loading the sidecar if needed."""
    tvm = import_tvm()
    if kind == "cpu" or tvm.runtime.enabled(kind):
        return
    if kind in SIDECARS:
        label, name, needs = SIDECARS[kind]
        lib = Path(tvm.__file__).parent / "lib" / name
        if not lib.is_file():
            raise ArtifactError(f"this TVM install has no {label} runtime ({lib} is missing)")
        try:
            _loaded_sidecars[kind] = ctypes.CDLL(str(lib), mode=ctypes.RTLD_LOCAL)
        except OSError as err:
            raise ArtifactError(f"cannot load TVM's {label} runtime ({err}); {needs}") from None
        if tvm.runtime.enabled(kind):
            return
    raise ArtifactError(f"this TVM install cannot run on {kind} (tvm.runtime.enabled({kind!r}) is False)")
