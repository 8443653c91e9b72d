"""Target-spec parsing and a multi-arch nvcc hook for TVM's CUDA codegen.

TVM hands all kernels of a module to `tvm_callback_cuda_compile` as one CUDA source. The hook here
puts ember's own device code in front of it where the kernels call into it (device_code.py), compiles
that source once per arch, in parallel, and packs the cubins into one fatbin
(tvm-baseline-llama3-8b.md §8: on 2 cores this costs no more wall time than one arch).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import CudaToolchainError
from .device_code import with_device_sources

DEFAULT_ARCHS: tuple[str, ...] = ("sm_80", "sm_90")
MIN_SM = 75  # CUDA 13 dropped everything older than Turing
HOOK_NAME = "tvm_callback_cuda_compile"
_ARCH_RE = re.compile(r"sm_(\d{2,3})(a?)")
# Same front-end flags as tvm.support.nvcc (TVM's generated code relies on the half/bf16 operators).
_NVCC_FLAGS = (
    "-O3", "--use_fast_math",
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr", "--expt-extended-lambda",
    "--ptxas-options=--register-usage-level=10,--warn-on-local-memory-usage",
)


def sm_number(arch: str) -> int:
    """`"sm_90a"` -> 90."""
    m = _ARCH_RE.fullmatch(arch)
    if m is None:
        raise ValueError(f"invalid CUDA arch {arch!r}: expected sm_XX")
    return int(m.group(1))


def parse_cuda_target(spec: str) -> list[str]:
    """`"cuda"` -> `["sm_80", "sm_90"]`; `"cuda:sm_90"`, `"cuda:sm_80,sm_90"` -> those archs, sorted."""
    usage = f"invalid cuda target {spec!r}: expected 'cuda', 'cuda:sm_XX' or 'cuda:sm_XX,sm_YY' (XX >= {MIN_SM})"
    kind, sep, rest = spec.strip().partition(":")
    if kind != "cuda":
        raise ValueError(usage)
    if not sep:
        return list(DEFAULT_ARCHS)
    archs = [a.strip() for a in rest.split(",")]
    if not archs or any(_ARCH_RE.fullmatch(a) is None or sm_number(a) < MIN_SM for a in archs):
        raise ValueError(usage)
    if len(set(archs)) != len(archs):
        raise ValueError(f"{usage}; {spec!r} repeats an arch")
    return sorted(archs, key=lambda a: (sm_number(a), a))


@dataclass
class CompileStats:
    """What the hook did inside one `multi_arch_compile` block."""

    calls: int = 0
    seconds: float = 0.0
    source_bytes: int = 0
    fatbin_bytes: list[int] = field(default_factory=list)
    # TVM's FFI turns exceptions raised in the hook into plain RuntimeErrors; this keeps the original.
    error: CudaToolchainError | None = None


def _first_error_line(output: str) -> str:
    lines = [l.strip() for l in output.splitlines() if l.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[0] if lines else "(no output)"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise CudaToolchainError(f"{name} not found on PATH: ember needs the CUDA 13 toolkit to compile for cuda")
    return path


def compile_fatbin(code: str, archs: Sequence[str], stats: CompileStats | None = None) -> bytes:
    """Compile `code` to one cubin per arch (parallel nvcc runs) and return them as one fatbin. The fatbin is kept
    in ember's kernel cache under a hash of the source, the archs, the flags and nvcc's version: TVM generates the
    same source for the same model and options, so a second compile of a model skips nvcc (~23 s for llama3-8b on
    the 2-core box)."""
    nvcc, fatbinary = _tool("nvcc"), _tool("fatbinary")
    start = time.perf_counter()
    cached = _cache_path(nvcc, code, archs)
    if cached.is_file():
        data = cached.read_bytes()
        _count(stats, start, code, data)
        return data
    work = tempfile.mkdtemp(prefix="ember-nvcc-")
    src = os.path.join(work, "kernels.cu")
    with open(src, "w", encoding="utf-8") as f:
        f.write(code)
    procs = []
    for arch in archs:
        n = arch[3:]
        cubin = os.path.join(work, f"kernels_{arch}.cubin")
        cmd = [nvcc, "--cubin", *_NVCC_FLAGS, "-gencode", f"arch=compute_{n},code=sm_{n}", "-o", cubin, src]
        procs.append((arch, cubin, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    failed = []
    for arch, _, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            failed.append((arch, out.decode("utf-8", errors="replace")))
    if failed:
        arch, out = failed[0]
        raise CudaToolchainError(f"nvcc failed for {arch} on {src} (kept): {_first_error_line(out)}")
    fatbin = os.path.join(work, "kernels.fatbin")
    cmd = [fatbinary, "--64", f"--create={fatbin}"]
    cmd += [f"--image3=kind=elf,sm={arch[3:]},file={cubin}" for arch, cubin, _ in procs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CudaToolchainError(f"fatbinary failed on {work} (kept): {_first_error_line(proc.stdout + proc.stderr)}")
    with open(fatbin, "rb") as f:
        data = f.read()
    shutil.rmtree(work, ignore_errors=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, cached)  # atomic: a concurrent compile reads the whole fatbin or none
    _count(stats, start, code, data)
    return data


def _count(stats: CompileStats | None, start: float, code: str, data: bytes) -> None:
    if stats is not None:
        stats.calls += 1
        stats.seconds += time.perf_counter() - start
        stats.source_bytes += len(code)
        stats.fatbin_bytes.append(len(data))


def _cache_path(nvcc: str, code: str, archs: Sequence[str]) -> Path:
    from .prefill_gemm import cache_dir

    digest = hashlib.sha256()
    for part in (code, " ".join(archs), " ".join(_NVCC_FLAGS), _nvcc_version(nvcc)):
        digest.update(hashlib.sha256(part.encode()).digest())
    return cache_dir() / f"tvm-kernels-{digest.hexdigest()[:24]}.fatbin"


@functools.cache
def _nvcc_version(nvcc: str) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout


@contextlib.contextmanager
def multi_arch_compile(archs: Sequence[str]) -> Iterator[CompileStats]:
    """Within the block, TVM compiles CUDA modules for every arch in `archs` (one fatbin, no PTX)."""
    import tvm_ffi  # after prepare_cuda_compile_process(), never at module import

    archs = list(archs)
    for arch in archs:
        sm_number(arch)
    stats = CompileStats()

    def hook(code: str, *_: object) -> bytearray:
        try:
            return bytearray(compile_fatbin(with_device_sources(code), archs, stats))
        except CudaToolchainError as err:
            stats.error = err
            raise

    previous = tvm_ffi.get_global_func(HOOK_NAME, allow_missing=True)
    tvm_ffi.register_global_func(HOOK_NAME, hook, override=True)
    try:
        yield stats
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(HOOK_NAME, previous, override=True)
        else:
            tvm_ffi.remove_global_func(HOOK_NAME)
