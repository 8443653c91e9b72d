"""NCCL for a cuda tensor-parallel artifact's shards: find libnccl, start one communicator per shard.

The artifact's library carries ember's NCCL collectives (targets/cuda/kernels/nccl_collectives.cu), which dlopen
libnccl.so.2 when asked. Every shard is a thread of this process driving its own GPU (tensor_parallel.HostGroup):
rank 0's `ncclGetUniqueId` is handed to every rank, and the ranks' threads call `ncclCommInitRank` at once (NCCL
lets one process drive several GPUs from several threads). The communicators live in the library, one per GPU;
the collectives the library's functions call find theirs by the tensor's device.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, InputError

LIBRARY = "libnccl.so.2"
ENV_LIBRARY = "EMBER_NCCL_LIBRARY"
ALL_REDUCE, ALL_GATHER = "ember_tp_nccl_allreduce", "ember_tp_nccl_allgather"
COLLECTIVES = {"all_reduce": ALL_REDUCE, "all_gather": ALL_GATHER}
OPEN, UNIQUE_ID, INIT, DESTROY = ("ember_tp_nccl_open", "ember_tp_nccl_unique_id", "ember_tp_nccl_init",
                                  "ember_tp_nccl_destroy")
ABORT = "ember_tp_nccl_abort"
UNIQUE_ID_BYTES = 128  # NCCL_UNIQUE_ID_BYTES


def is_nccl_build(collectives: dict[str, str]) -> bool:
    return collectives.get("all_reduce") == ALL_REDUCE


def wheel_library() -> Path | None:
    """libnccl.so.2 of the nvidia-nccl-cu13 (or -cu12) wheel in this Python, if installed."""
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "lib" / LIBRARY
        if path.is_file():
            return path
    return None


def library_candidates(env: dict[str, str] | None = None, wheel: Callable[[], Path | None] = wheel_library
                       ) -> list[str]:
    """Where libnccl is looked for, in order: $EMBER_NCCL_LIBRARY (alone, when set), the nvidia wheel's, then the
    system loader's search (LD_LIBRARY_PATH, ld.so.cache) by its soname."""
    env = os.environ if env is None else env
    if env.get(ENV_LIBRARY):
        path = Path(env[ENV_LIBRARY])
        if not path.is_file():
            raise InputError(f"{ENV_LIBRARY}={path}: no such file")
        return [str(path)]
    found = wheel()
    return ([str(found)] if found is not None else []) + [LIBRARY]


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


@dataclass(frozen=True)
class NcclFunctions:
    """The library's set-up functions (packed functions of model.so)."""

    open: Callable[[str], int]
    unique_id: Callable[[], bytes]
    init: Callable[[int, int, int, bytes], None]
    destroy: Callable[[int], None]
    abort: Callable[[int], None] | None = None  # absent from libraries built before it existed

    @classmethod
    def of(cls, module: Any, library: str) -> NcclFunctions:
        found = {}
        for name in (OPEN, UNIQUE_ID, INIT, DESTROY, ABORT):
            try:
                # query_imports: the loaded model.so is the VM executable; the library's own functions are in
                # the module it imports
                found[name] = module.get_function(name, True)
            except Exception:  # noqa: BLE001 - TVM's lookup error: say which function is missing
                found[name] = None
            if found[name] is None and name != ABORT:
                raise ArtifactError(f"{library}: has no {name}: its NCCL collectives are missing (compile the "
                                    "artifact again with this ember)")
        return cls(found[OPEN], found[UNIQUE_ID], found[INIT], found[DESTROY], found[ABORT])


def open_nccl(functions: NcclFunctions, candidates: Sequence[str]) -> tuple[str, int]:
    """(the libnccl path that loaded, NCCL's version code, e.g. 22809); one line naming every path tried."""
    tried = []
    for path in candidates:
        try:
            return path, int(functions.open(path))
        except Exception as err:  # noqa: BLE001 - the library's one-line RuntimeError
            tried.append(_last_line(err))
    raise ArtifactError(f"NCCL not found, which a cuda tensor-parallel artifact needs (pip install nvidia-nccl-cu13, "
                        f"or set {ENV_LIBRARY}): {'; '.join(tried) or 'no candidate'}")


def version_text(code: int) -> str:
    """NCCL's version code as text: 22809 -> 2.28.9 (codes below 10000 are NCCL 2.8 and older: 2803 -> 2.8.3)."""
    if code >= 10000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def rank_plan(devices: Sequence[int]) -> list[tuple[int, int, int]]:
    """(rank, ranks, GPU) per shard: shard r is rank r on the r-th GPU named; NCCL takes one rank per GPU."""
    if len(set(devices)) != len(devices):
        named = ",".join(str(d) for d in devices)
        raise InputError.about(f"{{devices}}: NCCL runs one rank per GPU, and cuda:{named} names one twice")
    return [(rank, len(devices), int(device)) for rank, device in enumerate(devices)]


class NcclGroup:
    """The communicators of one group of shards, started on `run` (tensor_parallel.HostGroup.run: one thread per
    rank, all at once) and destroyed by `close`."""

    def __init__(self, functions: NcclFunctions, devices: Sequence[int],
                 run: Callable[[list[Callable[[], Any]]], list[Any]], candidates: Sequence[str] | None = None
                 ) -> None:
        self.functions = functions
        self.plan = rank_plan(devices)
        self.library, code = open_nccl(functions, library_candidates() if candidates is None else candidates)
        self.version = version_text(code)
        try:
            unique_id = bytes(functions.unique_id())
        except Exception as err:  # noqa: BLE001
            raise ArtifactError(f"NCCL {self.version} ({self.library}): {_last_line(err)}") from None
        if len(unique_id) != UNIQUE_ID_BYTES:
            raise ArtifactError(f"NCCL's unique id has {len(unique_id)} bytes, expected {UNIQUE_ID_BYTES}")
        tasks = [lambda r=r, n=n, d=d: functions.init(r, n, d, unique_id) for r, n, d in self.plan]
        try:
            run(tasks)
        except Exception as err:  # noqa: BLE001
            raise ArtifactError(f"NCCL {self.version} could not start {len(self.plan)} ranks on "
                                f"cuda:{','.join(str(d) for _, _, d in self.plan)}: {_last_line(err)}") from None
        self.failure: str | None = None

    def fail(self, rank: int, err: BaseException) -> None:
        """Shard `rank` failed while the others were still running (HostGroup's on_stuck): they may wait in a
        collective for it forever, so every communicator is aborted, which ends their waits. The group is then
        spent: `check` refuses every later call."""
        if self.failure is not None:
            return
        self.failure = f"shard {rank} failed ({_last_line(err)})"
        if self.functions.abort is None:
            return
        for _, _, device in self.plan:
            try:
                self.functions.abort(device)
            except Exception:  # noqa: BLE001 - abort what can be aborted; the first error is the one to report
                pass

    def check(self) -> None:
        if self.failure is not None:
            raise ArtifactError(f"the shards' NCCL group was aborted after {self.failure}: load the artifact again")

    def close(self) -> None:
        for _, _, device in self.plan:
            self.functions.destroy(device)
        self.plan = []


__all__ = ["ABORT", "ALL_GATHER", "ALL_REDUCE", "COLLECTIVES", "NcclFunctions", "NcclGroup", "is_nccl_build",
           "library_candidates", "open_nccl", "rank_plan", "version_text", "wheel_library"]
