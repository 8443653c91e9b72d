"""The one interface every target implements, and the table of targets `--target` can name.

A target is what `ember compile` needs to know about one kind of device: its defaults, the entry points it exports,
how ir ops lower for it, and how the Relax module becomes a library file. `compiler.py` only calls this interface,
so a new target is one folder with one `Target` subclass, registered in `TARGETS`.

Parsing a `--target` string imports no TVM (a typo fails in well under a second); everything that needs TVM's
compiler happens inside the methods, after the entry point has prepared the process (the cuda stub driver).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    import tvm

    from ..runtime.artifact import TargetInfo


@dataclass(frozen=True)
class BuildOptions:
    cuda_graph: bool = True  # capture static-shape regions into CUDA graphs (cuda only)
    # Host work of the driver's that needs no library (the golden reference build): a target that waits on a
    # compiler process of its own calls it once, before waiting, so that the two overlap; otherwise it runs later.
    meanwhile: Callable[[], None] | None = None


class Progress:
    """What `build` reports: `wait(message)` is a context manager around one long call (compiler.Stage)."""

    wait: Callable[[str], Any]


class Target(ABC):
    """One `--target`: `cpu`, `cuda:sm_90`, `metal`, ... Subclasses set the class attributes and implement the
    methods; `parse` turns the user's string into an instance or raises ValueError with a one-line reason."""

    name: ClassVar[str]  # the kind before any ':' (cpu | cuda | metal); the manifest's target.kind
    forms: ClassVar[str]  # the accepted spellings, for error messages
    default_quant: ClassVar[str]
    default_dtype: ClassVar[str]  # compute dtype
    static_decode: ClassVar[bool] = True  # export `decode1`, a static batch-1 decode step
    # The quantized linear layers' dequantization as a block of its own (GPU schedules inline it into their tile
    # loads); False: the value is computed inside the reduction (cpu's generic path).
    dequant_stage: ClassVar[bool] = True
    library_file: ClassVar[str] = "model.so"
    # The packed functions the tensor-parallel collectives call (targets/lower_collective.py): TVM Disco's on GPUs
    # (in a Disco worker; NCCL is the worker's ccl), ember's host ones on cpu (runtime/tensor_parallel.py).
    collectives: ClassVar[dict[str, str]] = {"all_reduce": "runtime.disco.allreduce",
                                             "all_gather": "runtime.disco.allgather"}

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @classmethod
    @abstractmethod
    def parse(cls, spec: str) -> Target:
        """The target for `spec` (its name is `cls.name`), or ValueError naming what is wrong."""

    @property
    def label(self) -> str:
        """The spec as a path component (default artifact folders)."""
        return self.spec.replace(":", "-").replace(",", "-")

    def prepare_process(self) -> None:
        """Process-wide set-up the build needs before `import tvm` (entry points call it; default: none)."""

    @abstractmethod
    def tvm_target(self) -> tvm.target.Target:
        """The TVM target the kernels are scheduled and compiled for (host included)."""

    def collective_functions(self) -> dict[str, str]:
        """`collectives`, or ember's host ones on any target with EMBER_TP_COLLECTIVES=host (a GPU build whose
        shards all run in one process, for the one-GPU check of docs/measurements/tensor-parallel-one-gpu.py)."""
        import os

        if os.environ.get("EMBER_TP_COLLECTIVES") == "host":
            from ..runtime.tensor_parallel import HOST_COLLECTIVES

            return dict(HOST_COLLECTIVES)
        return dict(self.collectives)

    def lowerings(self) -> Mapping[str, Any]:
        """This target's own lowerings of ir ops (targets.lower's overrides); default: none."""
        return {}

    # What this target's own attention kernels apply beyond a window on every layer, where `window_in_kernels` holds:
    # "window_layers" (a window on some layers only: attention_window.WINDOW_BY_SIGN_ATTR) and "softcap" (tanh
    # soft-capping of the scores, attention_window.SOFTCAP_ATTR). A model asking for one the target lacks is refused.
    attention_features: frozenset[str] = frozenset()

    def window_in_kernels(self, kv_cache: Any) -> bool:
        """Whether this target's own attention kernels apply the sliding window of a model with this KV cache
        spec (ir.KVCacheSpec) as a mask, over a cache that keeps every token (targets/attention_window.py);
        default: no, TVM's cache drops the pages that leave the window."""
        return False

    @abstractmethod
    def build(self, relax_mod: tvm.IRModule, library: Path, stage: Progress, options: BuildOptions) -> TargetInfo:
        """Compile `relax_mod`, write the library to `library` and return what the manifest records."""


# name -> "module:Class", imported on first use so that parsing a spec stays cheap.
TARGETS: dict[str, str] = {
    "cpu": "ember.targets.cpu:CpuTarget",
    "cuda": "ember.targets.cuda:CudaTarget",
    "metal": "ember.targets.metal:MetalTarget",
}


def target_class(name: str) -> type[Target]:
    module, _, cls = TARGETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def target_forms() -> str:
    return ", ".join(target_class(name).forms for name in TARGETS)


def parse_target(spec: Any) -> Target:
    """The Target for a `--target` string; ValueError with a one-line reason otherwise."""
    if not isinstance(spec, str):
        raise ValueError(f"must be a string ({target_forms()}), got {spec!r}")
    name = spec.strip().partition(":")[0]
    if name not in TARGETS:
        raise ValueError(f"{spec!r}: unknown target (known: {target_forms()})")
    return target_class(name).parse(spec.strip())


__all__ = ["BuildOptions", "Progress", "Target", "TARGETS", "parse_target", "target_class", "target_forms"]
