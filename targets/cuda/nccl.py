"""ember's NCCL collectives in a cuda tensor-parallel build's library (kernels/nccl_collectives.cu).

A cuda build with --tensor-parallel N > 1 lowers its all-reduce / all-gather to `ember_tp_nccl_allreduce` /
`ember_tp_nccl_allgather` (CudaTarget.collectives); `NcclCollectives` notices those lowerings and compiles the
.cu with nvcc at `ember compile` into an object linked into model.so, as prefill_gemm.py's GEMMs are (same cache
folder, same ObjectBuild). Only NCCL's header is needed here, from the `nvidia-nccl-cu13` wheel (the `cuda` extra)
or $EMBER_NCCL_INCLUDE: the library dlopens libnccl.so.2 at run time (runtime/nccl.py), so it loads without NCCL
or a GPU and fails only when a shard group starts.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...runtime.nccl import ABORT, ALL_GATHER, ALL_REDUCE, COLLECTIVES, DESTROY, INIT, OPEN, UNIQUE_ID
from . import CudaToolchainError
from .prefill_gemm import KERNEL_DIR, ObjectBuild, object_key, tvm_ffi_include

SOURCE = KERNEL_DIR / "nccl_collectives.cu"
# the collectives, and what runtime/nccl.py calls to start a shard group
EXPORTS = (OPEN, UNIQUE_ID, INIT, DESTROY, ABORT, ALL_REDUCE, ALL_GATHER)
WHEEL = "nvidia-nccl-cu13==2.28.9"
_FLAGS = ("-std=c++17", "-O2", "-DNDEBUG", "-Xcompiler", "-fPIC", "-c")


def nccl_include() -> Path:
    """The folder holding nccl.h: $EMBER_NCCL_INCLUDE, else the nvidia-nccl wheel's include/."""
    override = os.environ.get("EMBER_NCCL_INCLUDE")
    if override:
        folder = Path(override)
        if not (folder / "nccl.h").is_file():
            raise CudaToolchainError(f"EMBER_NCCL_INCLUDE={override}: no nccl.h there")
        return folder
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(root) / "include" / "nccl.h").is_file():
            return Path(root) / "include"
    raise CudaToolchainError(f"a cuda --tensor-parallel build needs NCCL's header: pip install '{WHEEL}' (the "
                             "ember[cuda] extra) or set EMBER_NCCL_INCLUDE to a folder with nccl.h")


@dataclass(frozen=True)
class NcclObjectSpec:
    """The object (prefill_gemm.ObjectBuild's spec protocol): host code only, no arch in its flags."""

    include: Path

    def command(self, nvcc: str, source: Path, output: Path) -> list[str]:
        return [nvcc, *_FLAGS, f"-I{self.include}", f"-I{tvm_ffi_include()}", "-o", str(output), str(source)]

    @property
    def stem(self) -> str:
        return "nccl_collectives"

    def source_text(self) -> str:
        return SOURCE.read_text(encoding="utf-8")

    def key(self, nvcc: str) -> str:
        header = (self.include / "nccl.h").read_text(encoding="utf-8", errors="replace")
        return object_key(self, nvcc, header, str(self.include))


class NcclCollectives:
    """Lowering hooks for all_reduce / all_gather that only record their use (the generic lowering emits the
    call), and the object build once one was used."""

    def __init__(self) -> None:
        self.used = False

    def mark(self, it: Any, node: Any, args: list) -> None:
        if it.collectives.get(node.op) == COLLECTIVES.get(node.op):
            self.used = True
        return None  # the generic lowering (targets/lower_collective.py) builds the call

    def lowerings(self) -> dict[str, Any]:
        return {op: self.mark for op in COLLECTIVES}

    def start_objects(self) -> ObjectBuild | None:
        return ObjectBuild([NcclObjectSpec(nccl_include())]) if self.used else None


__all__ = ["ALL_GATHER", "ALL_REDUCE", "COLLECTIVES", "EXPORTS", "NcclCollectives", "NcclObjectSpec", "nccl_include"]
