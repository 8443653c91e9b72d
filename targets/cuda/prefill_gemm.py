"""cuda lowering of the prefill's 16-bit `linear` layers onto GEMMs compiled into the artifact's library.

TVM's dlight Matmul schedule (WMMA) runs the prefill GEMMs at 27-38 % of cuBLAS (../shared/guide/tvm-tensorcore.md).
Here a `linear` with fp16 or bf16 x and weight in a prefill function (a symbolic token count) becomes a
`call_dps_packed` of `ember_prefill_gemm_<dtype>`, defined by kernels/prefill_gemm.cu: on sm_90 ember's
warp-specialized TMA + wgmma kernel (kernels/prefill_gemm_sm90.cuh), on sm_80 CUTLASS 2's multistage mma.sync
kernel, chosen at run time by the device. A bias is added by a Relax add after it (it fuses into the next
elementwise kernel). ember's kernel is the sm_90 default (checked on the GPU against torch and cuBLAS by
tools/prefill_gemm_check.py kernel; ~5 s of nvcc where CUTLASS's takes ~50 s on one core); EMBER_CUDA_GEMM=cutlass
takes CUTLASS 3's cooperative kernel instead (faster at 512 tokens, slower at 128 and from 2048 on: RESULTS.md).

The .cu is compiled by nvcc at `ember compile` (CUTLASS from the headers of the `nvidia-cutlass` package, which
builds with sm_80 need: TVM's copy of CUTLASS lacks the collective builders), once per (dtype, archs, nvcc, CUTLASS,
source), and the object is kept in a cache folder (`$EMBER_CACHE_DIR`, else `$XDG_CACHE_HOME/ember`, else
`~/.cache/ember`) for later compiles; the compile runs beside `tvm.compile` and the object is linked into model.so
with libcudart. With EMBER_CUDA_GEMM=0, or an sm_80 build without the headers, dlight's schedule keeps these layers.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import CudaToolchainError
from .native_gemv import is_decode1
from .native_lowbatch import in_prefill
from .nvcc import sm_number

log = logging.getLogger(__name__)

ENV = "EMBER_CUDA_GEMM"
KERNEL_DIR = Path(__file__).with_name("kernels")
SOURCE = KERNEL_DIR / "prefill_gemm.cu"
DTYPES = {"float16": ("f16",), "bfloat16": ("bf16",)}
_FLAGS = ("-std=c++17", "-O3", "-DNDEBUG", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", "-c")


def function_name(dtype: str) -> str:
    return f"ember_prefill_gemm_{DTYPES[dtype][0]}"


def cutlass_root() -> Path | None:
    """The nvidia-cutlass package's source folder (include/ and tools/util/include/), or None if not installed."""
    override = os.environ.get("EMBER_CUTLASS_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "source"
    return root if (root / "include" / "cutlass" / "gemm" / "collective" / "builders").is_dir() else None


def cutlass_forced() -> bool:
    """CUTLASS 3's kernel for sm_90 instead of ember's (EMBER_CUDA_GEMM=cutlass)."""
    return os.environ.get(ENV, "1") == "cutlass"


def needs_cutlass(archs: list[str] | tuple[str, ...]) -> bool:
    """Whether the object for these archs includes CUTLASS: sm_80 code always does, sm_90 code only when forced."""
    return cutlass_forced() or any(sm_number(a) != 90 for a in archs)


def enabled(archs: list[str] | tuple[str, ...] = ("sm_90",)) -> bool:
    """The GEMM takes the prefill linears of a build for `archs` (every arch sm_80..sm_90, headers where needed)."""
    if os.environ.get(ENV, "1") == "0" or not all(80 <= sm_number(a) <= 90 for a in archs):
        return False
    return not needs_cutlass(archs) or cutlass_root() is not None


def cache_dir() -> Path:
    if os.environ.get("EMBER_CACHE_DIR"):
        return Path(os.environ["EMBER_CACHE_DIR"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ember" / "kernels"


# ---- the lowering ---------------------------------------------------------------------------------------------------

def _static(dim: Any) -> int | None:
    value = getattr(dim, "value", dim)
    return value if isinstance(value, int) else None


def plan(it: Any, args: list) -> tuple[int, int, str] | None:
    """(rows N, cols K, dtype) of a prefill linear the GEMM takes, else None."""
    x, weight = args[0], args[1]
    dtype = str(x.dtype)
    if dtype not in DTYPES or str(weight.dtype) != dtype or len(weight.shape) != 2:
        return None
    rows, cols = (_static(d) for d in weight.shape)
    if rows is None or cols is None or rows % 8 or cols % 8:  # 16-byte rows for TMA / cp.async
        return None
    if len(args) == 3 and str(args[2].dtype) not in (dtype, "float32"):
        return None
    lead = list(x.shape[:-1])
    symbolic = [d for d in lead if _static(d) is None]
    if is_decode1(lead) or not symbolic or not any(in_prefill(it, d) for d in symbolic):
        return None
    return rows, cols, dtype


class PrefillGemm:
    """The lowering (records which dtypes it used) and, after tracing, the object that defines them."""

    def __init__(self, archs: list[str]) -> None:
        self.archs = archs
        self.dtypes: set[str] = set()

    def lower_linear(self, it: Any, node: Any, args: list) -> Any:
        planned = plan(it, args)
        if planned is None:
            return None
        from tvm import relax
        from tvm.relax.frontend.nn import op

        rows, _, dtype = planned
        x, weight = args[0], args[1]
        self.dtypes.add(dtype)
        out = relax.TensorType([*x.shape[:-1], rows], dtype)
        y = op.wrap_nested(relax.call_dps_packed(function_name(dtype), [x._expr, weight._expr], out_ty=out),
                           name="prefill_gemm")
        if len(args) == 3:
            bias = args[2] if str(args[2].dtype) == dtype else op.astype(args[2], dtype)
            y = y + bias
        return y

    def start_objects(self) -> ObjectBuild | None:
        """Starts compiling (or finds in the cache) the object for every dtype the lowering used."""
        if not self.dtypes:
            return None
        root = cutlass_root() if needs_cutlass(self.archs) else None
        if root is None and needs_cutlass(self.archs):
            raise CudaToolchainError("the nvidia-cutlass headers went missing during the compile")
        return ObjectBuild([ObjectSpec(d, tuple(self.archs), root, cutlass_forced()) for d in sorted(self.dtypes)])


# ---- the object -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectSpec:
    dtype: str
    archs: tuple[str, ...]
    cutlass: Path | None  # the nvidia-cutlass source folder, where the object includes CUTLASS
    cutlass90: bool = False  # CUTLASS 3's kernel for sm_90 instead of ember's

    def command(self, nvcc: str, source: Path, output: Path) -> list[str]:
        suffix = DTYPES[self.dtype][0]
        sms = [sm_number(a) for a in self.archs]
        gencode: list[str] = []
        for sm in sms:
            code = f"{sm}a" if sm == 90 else str(sm)  # wgmma and setmaxnreg are sm_90a features
            gencode += ["-gencode", f"arch=compute_{code},code=sm_{code}"]
        defines = [f"-DEMBER_GEMM_SM90={int(90 in sms)}", f"-DEMBER_GEMM_SM80={int(any(80 <= s < 90 for s in sms))}",
                   f"-DEMBER_GEMM_BF16={int(self.dtype == 'bfloat16')}", f"-DEMBER_GEMM_NAME=ember_prefill_gemm_{suffix}"]
        if self.cutlass90:
            defines.append("-DEMBER_GEMM_CUTLASS90=1")
        includes = [f"-I{tvm_ffi_include()}"]
        if self.cutlass is not None:
            includes = [f"-I{self.cutlass / 'include'}", f"-I{self.cutlass / 'tools' / 'util' / 'include'}", *includes]
        return [nvcc, *_FLAGS, *defines, *gencode, *includes, "-o", str(output), str(source)]

    @property
    def stem(self) -> str:
        return f"prefill_gemm-{self.dtype}"

    def source_text(self) -> str:
        """The .cu with ember's own headers inlined (the cache folder compiles it, away from kernels/)."""
        from .device_code import inlined

        return inlined(SOURCE.name, set()) if SOURCE.parent == KERNEL_DIR else SOURCE.read_text(encoding="utf-8")

    def key(self, nvcc: str) -> str:
        if self.cutlass is None:
            return object_key(self, nvcc)
        return object_key(self, nvcc, _cutlass_version(self.cutlass), str(self.cutlass))


def object_key(spec: Any, nvcc: str, extra: str = "", *paths: str) -> str:
    """What an object depends on: its source, nvcc's version, its flags (less the install paths), tvm-ffi's."""
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    flags = " ".join(spec.command("nvcc", Path("src"), Path("out"))[1:])
    for path in (*paths, tvm_ffi_include()):
        flags = flags.replace(path, "")
    digest = hashlib.sha256()
    for part in (spec.source_text().encode(), version.encode(), extra.encode(), flags.encode(),
                 _tvm_ffi_version().encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:24]


def tvm_ffi_include() -> str:
    spec = importlib.util.find_spec("tvm_ffi")
    if spec is None or not spec.submodule_search_locations:
        raise CudaToolchainError("tvm_ffi is not installed: its headers are needed to compile ember's GEMMs")
    return str(Path(next(iter(spec.submodule_search_locations))) / "include")


def _tvm_ffi_version() -> str:
    from importlib.metadata import version

    return version("apache-tvm-ffi")


def _cutlass_version(root: Path) -> str:
    header = root / "include" / "cutlass" / "version.h"
    text = header.read_text(encoding="utf-8") if header.is_file() else ""
    return " ".join(re.findall(r"#define CUTLASS_(?:MAJOR|MINOR|PATCH) (\d+)", text))


def cuda_library_dir(nvcc: str) -> Path:
    """The folder of libcudart.so of the toolkit that `nvcc` belongs to (nvcc may be a wrapper script)."""
    out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True)
    top = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    candidates = [Path(top.group(1).strip())] if top else []
    if os.environ.get("CUDA_HOME"):
        candidates.insert(0, Path(os.environ["CUDA_HOME"]))
    for root in candidates:
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
            if (root / sub / "libcudart.so").exists():
                return (root / sub).resolve()
    raise CudaToolchainError(f"libcudart.so of the CUDA toolkit of {nvcc} not found (set CUDA_HOME)")


STAGE = Path("/tmp/ember-nvcc")


def _stage_folder() -> Path | None:
    """The fixed folder nvcc compiles ember's objects in, or None where it cannot be written (the objects then come
    out right, but their bytes follow the temporary folder's path)."""
    try:
        STAGE.mkdir(mode=0o1777, parents=True, exist_ok=True)
        probe = Path(tempfile.mkstemp(dir=STAGE)[1])
        probe.unlink()
        return STAGE
    except OSError:
        return None


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An exclusive lock on `lock` (two compiles of one object share its stage folder)."""
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _strip_local_symbols(obj: Path) -> None:
    """Drops the symbols no relocation needs, among them the FILE symbol naming nvcc's host temp file
    (`tmpxft_<pid>_...cudafe1.cpp`): with it, every nvcc run gives other bytes. Without objcopy the object keeps them
    (it links the same; only byte-identical rebuilds are lost)."""
    objcopy = shutil.which("objcopy")
    if objcopy is not None:
        subprocess.run([objcopy, "--strip-unneeded", str(obj)], check=True, capture_output=True)


class ObjectBuild:
    """nvcc runs for the missing objects in a background thread; `result()` waits and gives the object paths.
    A spec has `stem`, `source_text()` (one self-contained source), `command(nvcc, source, output)` and
    `key(nvcc)`: ObjectSpec here, prefill_qgemm.QObjectSpec."""

    def __init__(self, specs: list[Any]) -> None:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            raise CudaToolchainError("nvcc not found on PATH: ember needs the CUDA 13 toolkit to compile for cuda")
        self.nvcc = nvcc
        folder = cache_dir()
        self.paths = [folder / f"{spec.stem}-{spec.key(nvcc)}.o" for spec in specs]
        self.missing = [(s, p) for s, p in zip(specs, self.paths) if not p.is_file()]
        self.error: CudaToolchainError | None = None
        self._thread = threading.Thread(target=self._run, name="ember-prefill-gemm", daemon=True)
        self._thread.start()

    @property
    def cached(self) -> bool:
        return not self.missing

    def _run(self) -> None:
        try:
            for spec, path in self.missing:
                self._compile(spec, path)
        except CudaToolchainError as err:
            self.error = err

    def _compile(self, spec: Any, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        stage = _stage_folder()
        with _locked(stage / f"{path.stem}.lock") if stage is not None else contextlib.nullcontext():
            if path.is_file():  # a concurrent compile of the same object finished first
                return
            # The source at a fixed absolute path (nvcc names anonymous namespaces after a hash of it, and the
            # object records it): the same inputs give the same bytes from every cache, user and machine.
            work = stage / path.stem if stage is not None else Path(tempfile.mkdtemp(prefix=path.stem + ".",
                                                                                     dir=path.parent))
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            source = work / f"{path.stem}.cu"
            source.write_text(spec.source_text(), encoding="utf-8")
            command = spec.command(self.nvcc, Path(source.name), Path(path.name))
            proc = subprocess.run(command, capture_output=True, text=True, cwd=work)
            output = work / path.name
            if proc.returncode != 0 or not output.is_file():
                lines = [l for l in (proc.stdout + proc.stderr).splitlines() if "error" in l.lower()] or ["(no output)"]
                shutil.rmtree(work, ignore_errors=True)
                raise CudaToolchainError(f"nvcc failed on {spec.stem}: {lines[0].strip()}")
            _strip_local_symbols(output)
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            shutil.copyfile(output, partial)
            os.replace(partial, path)  # atomic: a concurrent compile sees the whole object or none
            shutil.rmtree(work, ignore_errors=True)

    def result(self) -> list[Path]:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.paths

    def link_options(self) -> list[str]:
        # --no-as-needed: the linker sees -lcudart before the objects that need it (TVM puts options first)
        return [f"-L{cuda_library_dir(self.nvcc)}", "-Wl,--no-as-needed", "-lcudart", "-Wl,--as-needed"]


__all__ = ["ENV", "ObjectBuild", "PrefillGemm", "cache_dir", "cutlass_forced", "cutlass_root", "enabled",
           "function_name", "needs_cutlass", "object_key",
           "plan", "tvm_ffi_include"]
