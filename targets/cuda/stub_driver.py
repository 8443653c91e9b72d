"""Stub `libcuda.so.1` so that a driverless build box compiles CUDA kernels with nvcc.

Without a driver, TVM's CUDA runtime fails to load and `tvm.compile` silently embeds CUDA source
instead of cubins (tvm-core.md §0.1, §3). Loading this stub under the soname `libcuda.so.1` before
`import tvm` lets the runtime load, so TVM calls `tvm_callback_cuda_compile` at build time.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import CudaToolchainError

STUB_SONAME = "libcuda.so.1"
CUDART_SONAME = "libcudart.so.13"
STUB_SOURCE = Path(__file__).with_name("stub_driver.c")
STUB_MARKER = "ember_stub_cuda_marker"


def stub_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/ember/stubcuda`, else `~/.cache/ember/stubcuda`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ember" / "stubcuda"


def _c_compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    raise CudaToolchainError("no C compiler found (set CC): ember needs one to build its stub libcuda.so.1")


def build_stub_driver(cache_dir: Path | None = None) -> Path:
    """Compile the stub (once per source version) and return the path of its `libcuda.so.1`."""
    source = STUB_SOURCE.read_bytes()
    key = hashlib.sha256(source).hexdigest()[:16]
    out_dir = (cache_dir or stub_cache_dir()) / key
    out = out_dir / STUB_SONAME
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libcuda-", suffix=".so.tmp", dir=out_dir)
    os.close(fd)
    cmd = [_c_compiler(), "-shared", "-fPIC", "-O2", f"-Wl,-soname,{STUB_SONAME}", "-o", tmp, str(STUB_SOURCE)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((l for l in proc.stderr.splitlines() if l.strip()), f"exit code {proc.returncode}")
            raise CudaToolchainError(f"building the stub libcuda.so.1 failed ({' '.join(cmd)}): {first}")
        os.replace(tmp, out)  # atomic: concurrent builders race to the same content
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load_real_driver() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(STUB_SONAME, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None


def is_stub(lib: ctypes.CDLL) -> bool:
    """True if `lib` is ember's stub rather than a real driver."""
    return hasattr(lib, STUB_MARKER)


def _cudart_candidates(nvcc: str) -> list[str]:
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             str(Path(os.path.realpath(nvcc)).parent.parent), "/usr/local/cuda"]
    roots += sorted(glob.glob("/usr/local/cuda-13*"), reverse=True)
    found = []
    for root in filter(None, roots):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
            path = os.path.join(root, sub, CUDART_SONAME)
            if os.path.isfile(path):
                found.append(path)
    return found


def _load_cudart(nvcc: str) -> None:
    # libtvm_runtime_cuda.so needs libcudart.so.13 by soname; preloading it by path satisfies that.
    for name in [CUDART_SONAME, *_cudart_candidates(nvcc)]:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue
    raise CudaToolchainError(f"{CUDART_SONAME} not found (ldconfig, CUDA_HOME, next to nvcc): "
                             "ember needs the CUDA 13 runtime to compile for cuda")


def prepare_cuda_compile_process() -> None:
    """Make this process able to compile CUDA kernels; call it BEFORE `import tvm`.

    Call it only from entry points or build subprocesses, never at import time: it may load a stub
    driver into the process, which must never happen where kernels are meant to run.
    """
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise CudaToolchainError("nvcc not found on PATH: ember needs the CUDA 13 toolkit to compile for cuda")
    if "tvm" in sys.modules:
        if sys.modules["tvm"].runtime.enabled("cuda"):
            return
        raise CudaToolchainError("tvm was imported without its CUDA runtime, so CUDA kernels would be embedded "
                                 "as source: call prepare_cuda_compile_process() before `import tvm`")
    if _load_real_driver() is not None:
        return
    _load_cudart(nvcc)
    stub = build_stub_driver()
    lib = ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    if not is_stub(lib):
        raise CudaToolchainError(f"{stub} is not ember's stub libcuda (marker symbol missing)")
