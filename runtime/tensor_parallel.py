"""Tensor-parallel artifacts at run time (manifest `tensor_parallel`, passes/shard_tensor_parallel.py).

Every shard runs the one library on its own weights and KV cache; the library's collectives call packed functions
named in the manifest (`Target.collectives`), with the signatures of TVM Disco's:
    allreduce(send, ShapeTuple([kind]), in_group, recv)      allgather(send, in_group, recv)  (concat on axis 0)
- GPU builds call `runtime.disco.allreduce` / `allgather`: they run inside Disco workers (one per GPU), whose ccl
  (NCCL) does the work. This TVM wheel has Disco's sessions and those dispatchers but no NCCL ccl registered
  (`runtime.disco.nccl.*`): `require_disco_ccl` says so in one line (DESIGN.md, "Tensor parallelism").
- cpu builds call ember's host collectives below: each shard is a thread of this process (`HostGroup`), and the
  ranks meet at a barrier, sum (in rank order) or concatenate numpy copies, and write the result on every rank.
  This is how the test suite checks a sharded build against the unsharded one on one machine.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from ..errors import ArtifactError, InputError

HOST_ALL_REDUCE = "ember.tp.host_allreduce"
HOST_ALL_GATHER = "ember.tp.host_allgather"
HOST_COLLECTIVES = {"all_reduce": HOST_ALL_REDUCE, "all_gather": HOST_ALL_GATHER}
DISCO_CCL = "nccl"
SUM = 0  # Disco's ReduceKind::kSum

T = TypeVar("T")
_local = threading.local()  # .group, .rank of the calling thread while HostGroup.run runs its task


class HostArrays:
    """What the host collectives do with the library's tensors: numpy copies on the host. The one-GPU check swaps
    in views on the device (docs/measurements/tensor-parallel-one-gpu.py: torch over DLPack), so the sum stays
    there."""

    def take(self, tensor: Any) -> Any:
        return tensor.numpy()

    def total(self, parts: list[Any]) -> Any:
        total = parts[0].copy()
        for part in parts[1:]:  # rank order, the same on every rank
            total += part
        return total

    def concat(self, parts: list[Any]) -> Any:
        return np.concatenate(parts, axis=0)

    def put(self, array: Any, recv: Any) -> None:
        recv.copyfrom(array)


class HostGroup:
    """`shards` ranks, one thread each, meeting in the host collectives."""

    def __init__(self, shards: int, arrays: HostArrays | None = None) -> None:
        self.shards = shards
        self.arrays = arrays or HostArrays()
        self._barrier = threading.Barrier(shards)
        self._slots: list[Any] = [None] * shards

    def exchange(self, rank: int, array: Any, combine: Callable[[list[Any]], T]) -> T:
        """`combine` of every rank's array (in rank order), once all have arrived. It runs before any rank goes
        on: an array may be a view of a rank's buffer, which that rank's next kernels may overwrite."""
        self._slots[rank] = array
        self._barrier.wait()
        result = combine(list(self._slots))
        self._barrier.wait()
        return result

    def run(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Run task r as rank r on a thread of its own; the first error is raised once every thread has stopped
        (the barrier is broken, so no rank waits for one that failed)."""
        if len(tasks) != self.shards:
            raise ValueError(f"{len(tasks)} tasks for {self.shards} ranks")
        register_host_collectives()
        results: list[Any] = [None] * self.shards
        errors: list[BaseException | None] = [None] * self.shards

        def work(rank: int) -> None:
            _local.group, _local.rank = self, rank
            try:
                results[rank] = tasks[rank]()
            except BaseException as err:  # noqa: BLE001 - re-raised on the calling thread
                errors[rank] = err
                self._barrier.abort()
            finally:
                _local.group = None

        threads = [threading.Thread(target=work, args=(r,), name=f"ember-tp-{r}") for r in range(self.shards)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)),
                     next((e for e in errors if e is not None), None))
        if first is not None:
            self._barrier.reset()
            raise first
        return results


def _caller() -> tuple[HostGroup, int]:
    group = getattr(_local, "group", None)
    if group is None:
        raise RuntimeError("a host collective was called outside HostGroup.run (a cpu tensor-parallel artifact runs "
                           "its shards through ember.runtime.tensor_parallel)")
    return group, _local.rank


def _host_allreduce(send: Any, kind: Any, in_group: bool, recv: Any) -> None:
    if int(kind[0]) != SUM:
        raise ValueError(f"host all-reduce supports sum only, got kind {int(kind[0])}")
    group, rank = _caller()
    arrays = group.arrays
    arrays.put(group.exchange(rank, arrays.take(send), arrays.total), recv)


def _host_allgather(send: Any, in_group: bool, recv: Any) -> None:
    group, rank = _caller()
    arrays = group.arrays
    arrays.put(group.exchange(rank, arrays.take(send), arrays.concat), recv)


_registered = False


def register_host_collectives() -> None:
    global _registered
    if _registered:
        return
    import tvm_ffi

    tvm_ffi.register_global_func(HOST_ALL_REDUCE, _host_allreduce, override=True)
    tvm_ffi.register_global_func(HOST_ALL_GATHER, _host_allgather, override=True)
    _registered = True


# ---- devices and manifest checks ----------------------------------------------------------------------------------

def parse_devices(spec: str) -> tuple[str, list[int]]:
    """`cuda:0-3` -> ("cuda", [0, 1, 2, 3]); `cuda:0,2` -> ("cuda", [0, 2]); `cpu` or `cpu:4` -> ("cpu", [0] * n)
    (every cpu shard shares the host; n = 1 for `cpu`, to be widened to the shard count by `check_devices`)."""
    match = re.fullmatch(r"(cpu|cuda)(?::([0-9,\-]+))?", spec.strip().lower())
    if not match:
        raise InputError.about(f"{{devices}} {spec!r}: expected cuda:FIRST-LAST, cuda:I,J,... or cpu")
    kind, body = match.group(1), match.group(2)
    if kind == "cpu":
        return kind, [0] * (int(body) if body and body.isdigit() and int(body) > 0 else 1)
    if body is None:
        raise InputError.about(f"{{devices}} {spec!r}: name the GPUs, e.g. cuda:0-3")
    ids: list[int] = []
    for part in body.split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise InputError.about(f"{{devices}} {spec!r}: {part!r} is not a GPU index or range")
        lo, hi = int(first), int(last) if dash else int(first)
        if hi < lo:
            raise InputError.about(f"{{devices}} {spec!r}: range {part} runs backwards")
        ids.extend(range(lo, hi + 1))
    if len(set(ids)) != len(ids):
        raise InputError.about(f"{{devices}} {spec!r}: a GPU is named twice")
    return kind, ids


def check_manifest(manifest: Any) -> Any:
    """The manifest's tensor_parallel record, checked: one shard folder per shard, every parameter laid out."""
    tp = manifest.tensor_parallel
    if tp is None:
        raise InputError(f"artifact {manifest.name} is not split for tensor parallelism (compile it with "
                         "--tensor-parallel N)")
    if tp.shards < 2 or len(tp.shard_dirs) != tp.shards:
        raise ArtifactError(f"artifact {manifest.name}: tensor_parallel lists {len(tp.shard_dirs)} shard folders "
                            f"for {tp.shards} shards")
    missing = [p.name for p in manifest.params if p.name not in tp.layout]
    if missing:
        raise ArtifactError(f"artifact {manifest.name}: tensor_parallel.layout does not say how {missing[0]} is split")
    for name in tp.rank_values:
        if tp.layout.get(name) != "rank":
            raise ArtifactError(f"artifact {manifest.name}: {name} has a per-rank value but layout "
                                f"{tp.layout.get(name)!r}")
    return tp


def check_devices(manifest: Any, kind: str, ids: list[int], count: Callable[[str], int] | None = None) -> list[int]:
    """The devices the shards run on, one per shard: a one-line error when they are too few, too many or absent.
    `count(kind)` says how many devices of that kind exist (default: asks TVM)."""
    tp = check_manifest(manifest)
    target = manifest.target.kind
    if kind != target:
        raise InputError.about(f"{{devices}} {kind}: artifact {manifest.name} was built for {target}")
    if kind == "cpu":
        return [0] * tp.shards
    if len(ids) != tp.shards:
        raise InputError.about(f"{{devices}}: {len(ids)} GPU{'s' * (len(ids) != 1)} given, artifact {manifest.name} "
                               f"has {tp.shards} tensor-parallel shards (one GPU each)")
    present = (count or _device_count)(kind)
    if max(ids) >= present:
        raise InputError.about(f"{{devices}}: {kind}:{max(ids)} does not exist: this machine has {present} "
                               f"GPU{'s' * (present != 1)}, artifact {manifest.name} needs {tp.shards}")
    return ids


def _device_count(kind: str) -> int:
    from .tvm_import import ensure_device_runtime, import_tvm

    ensure_device_runtime(kind)
    tvm = import_tvm()
    n = 0
    while tvm.device(kind, n).exist:
        n += 1
    return n


def require_disco_ccl(ccl: str = DISCO_CCL) -> None:
    """A GPU tensor-parallel run needs Disco's collectives for `ccl`; this TVM wheel registers the dispatchers
    (runtime.disco.allreduce) but not NCCL's implementation (runtime.disco.nccl.*)."""
    import tvm_ffi

    if tvm_ffi.get_global_func(f"runtime.disco.{ccl}.init_ccl", allow_missing=True) is None:
        raise ArtifactError(f"this TVM runtime has no {ccl.upper()} collectives for Disco "
                            f"(runtime.disco.{ccl}.init_ccl is not registered), so a GPU tensor-parallel artifact "
                            "cannot run here yet (DESIGN.md, Tensor parallelism)")


def shard_random_fill(base: Callable[[int], Any], manifest: Any, rank: int) -> Callable[[Any, int, Any], Any]:
    """A random-weights fill for one shard: split weights get the shard's own seed (base(1 + rank)), replicated
    ones the same on every shard (base(0)), per-rank values their exact value."""
    tp = check_manifest(manifest)
    own, shared = base(1 + rank), base(0)

    def fill(param: Any, index: int, device: Any) -> Any:
        from .tvm_import import import_tvm

        if param.name in tp.rank_values:
            return import_tvm().runtime.tensor(np.array([rank * tp.rank_values[param.name]], dtype=np.int32), device)
        return (shared if tp.layout.get(param.name) == "replicated" else own)(param, index, device)

    return fill


# ---- running every shard in this process --------------------------------------------------------------------------

class ShardedRunner:
    """One ModelRunner per shard of an artifact built with the host collectives (cpu builds, or any build with
    EMBER_TP_COLLECTIVES=host), each driven on a thread of its own so the shards meet in the host collectives;
    every call returns rank 0's result (all ranks compute the same logits). `same_device`: every shard on the
    first device named (the one-GPU check)."""

    def __init__(self, path: Any, devices: str = "cpu", *, same_device: bool = False,
                 arrays: HostArrays | None = None, **runner_options: Any) -> None:
        from .artifact import read_manifest
        from .loader import load_artifact
        from .model_runner import ModelRunner

        manifest = read_manifest(path)
        tp = check_manifest(manifest)
        kind, ids = parse_devices(devices)
        ids = [ids[0]] * tp.shards if same_device else check_devices(manifest, kind, ids)
        if tp.collectives.get("all_reduce") != HOST_ALL_REDUCE:
            require_disco_ccl()
            raise ArtifactError(f"artifact {manifest.name} calls Disco's collectives: run it in Disco workers")
        self.manifest, self.group = manifest, HostGroup(tp.shards, arrays)
        self.runners = [ModelRunner(load_artifact(path, device=f"{kind}:{i}", shard=rank), **runner_options)
                        for rank, i in enumerate(ids)]

    def _each(self, method: str, *args: Any, **kwargs: Any) -> Any:
        results = self.group.run([lambda r=r: getattr(r, method)(*args, **kwargs) for r in self.runners])
        for rank, other in enumerate(results[1:], start=1):
            if not np.array_equal(results[0], other):
                raise RuntimeError(f"tensor-parallel shard {rank} computed other logits than shard 0")
        return results[0]

    # what runtime/generate.py asks of a runner: checks and facts from shard 0, model calls on every shard
    has_device_sampler = False

    @property
    def artifact(self) -> Any:
        return self.runners[0].artifact

    @property
    def context_length(self) -> int:
        return self.runners[0].context_length

    def check_tokens(self, tokens: Sequence[int], what: str = "token") -> Any:
        return self.runners[0].check_tokens(tokens, what)

    def check_budget(self, prompt_tokens: int, max_new_tokens: int) -> None:
        self.runners[0].check_budget(prompt_tokens, max_new_tokens)

    def prefill(self, seq_ids: Sequence[int], token_lists: Sequence[Sequence[int]], all_logits: bool = False) -> Any:
        return self._each("prefill", seq_ids, token_lists, all_logits=all_logits)

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int], reuse: bool = False) -> Any:
        return self._each("decode", seq_ids, tokens)

    def add_sequence(self, seq_id: int) -> None:
        for runner in self.runners:
            runner.add_sequence(seq_id)

    def remove_sequence(self, seq_id: int) -> None:
        for runner in self.runners:
            runner.remove_sequence(seq_id)

    def reset(self) -> None:
        for runner in self.runners:
            runner.reset()
