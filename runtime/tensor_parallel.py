"""Tensor-parallel artifacts at run time (manifest `tensor_parallel`, passes/shard_tensor_parallel.py).

Every shard runs the one library on its own weights and KV cache, as a thread of this process (`HostGroup`); the
library's collectives call packed functions named in the manifest (`Target.collectives`), with the signatures of
TVM Disco's:
    allreduce(send, ShapeTuple([kind]), in_group, recv)      allgather(send, in_group, recv)  (concat on axis 0)
- cuda builds call ember's NCCL collectives compiled into their library (`ember_tp_nccl_allreduce` / `allgather`,
  targets/cuda/kernels/nccl_collectives.cu): each shard on its own GPU, one NCCL communicator per GPU started by
  runtime/nccl.py, the collectives on the stream TVM runs the shard's kernels on.
- cpu builds call ember's host collectives below: the ranks meet at a barrier, sum (in rank order) or concatenate
  numpy copies, and write the result on every rank. This is how the test suite checks a sharded build against the
  unsharded one on one machine.
- Older cuda builds named Disco's `runtime.disco.allreduce`, for which this TVM wheel registers no NCCL
  (`runtime.disco.nccl.*`): they are refused in one line (compile again).
"""
from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from ..errors import ArtifactError, InputError

HOST_ALL_REDUCE = "ember.tp.host_allreduce"
HOST_ALL_GATHER = "ember.tp.host_allgather"
HOST_COLLECTIVES = {"all_reduce": HOST_ALL_REDUCE, "all_gather": HOST_ALL_GATHER}
DISCO_ALL_REDUCE = "runtime.disco.allreduce"
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
    """`shards` ranks, one thread each, meeting in the host collectives (or in NCCL, for cuda builds).

    `on_stuck(rank, error)`: called when rank `rank` has failed and some other rank is still running `grace_s`
    later. The host collectives need none (a failing rank breaks their barrier); NCCL's do, since a rank waiting
    in a collective for a peer that failed waits forever (NcclGroup.fail aborts the communicators)."""

    def __init__(self, shards: int, arrays: HostArrays | None = None,
                 on_stuck: Callable[[int, BaseException], None] | None = None, grace_s: float = 10.0) -> None:
        self.shards = shards
        self.arrays = arrays or HostArrays()
        self.on_stuck, self.grace_s = on_stuck, grace_s
        self._barrier = threading.Barrier(shards)
        self._slots: list[Any] = [None] * shards
        self._threads: list[threading.Thread] = []
        self._inboxes: list[queue.SimpleQueue] = []

    def exchange(self, rank: int, array: Any, combine: Callable[[list[Any]], T]) -> T:
        """`combine` of every rank's array (in rank order), once all have arrived. It runs before any rank goes
        on: an array may be a view of a rank's buffer, which that rank's next kernels may overwrite."""
        self._slots[rank] = array
        self._barrier.wait()
        result = combine(list(self._slots))
        self._barrier.wait()
        return result

    def run(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Run task r as rank r on rank r's thread (started on the first call, kept for the next ones: a GPU
        shard's thread keeps its CUDA device and stream), all at once; the first error is raised once every rank
        has stopped (the barrier is broken, so no rank waits for one that failed)."""
        if len(tasks) != self.shards:
            raise ValueError(f"{len(tasks)} tasks for {self.shards} ranks")
        register_host_collectives()
        if not self._threads:
            self._inboxes = [queue.SimpleQueue() for _ in range(self.shards)]
            self._threads = [threading.Thread(target=self._serve, args=(r,), name=f"ember-tp-{r}", daemon=True)
                             for r in range(self.shards)]
            for thread in self._threads:
                thread.start()
        done: queue.SimpleQueue = queue.SimpleQueue()
        for rank, task in enumerate(tasks):
            self._inboxes[rank].put((task, done))
        outcomes = self._outcomes(done)  # rank -> (ok, result or error)
        errors = [outcomes[r][1] for r in range(self.shards) if not outcomes[r][0]]
        first = next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)),
                     errors[0] if errors else None)
        if first is not None:
            self._barrier.reset()
            raise first
        return [outcomes[r][1] for r in range(self.shards)]

    def _outcomes(self, done: queue.SimpleQueue) -> dict[int, tuple[bool, Any]]:
        outcomes: dict[int, tuple[bool, Any]] = {}
        deadline: float | None = None  # set by the first failure, while an on_stuck is there to call
        unblocked = False
        while len(outcomes) < self.shards:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                rank, outcome = done.get(timeout=wait)
            except queue.Empty:
                failed = next(r for r, (ok, _) in outcomes.items() if not ok)
                if unblocked:  # still running after on_stuck: give up on them (their threads are lost)
                    for r in range(self.shards):
                        outcomes.setdefault(r, (False, RuntimeError(f"shard {r} did not stop after shard {failed} "
                                                                    "failed")))
                    break
                assert self.on_stuck is not None  # a rank failed and another is still running: unblock it
                self.on_stuck(failed, outcomes[failed][1])
                unblocked, deadline = True, time.monotonic() + self.grace_s
                continue
            outcomes[rank] = outcome
            if not outcome[0] and deadline is None and self.on_stuck is not None and len(outcomes) < self.shards:
                deadline = time.monotonic() + self.grace_s
        return outcomes

    def _serve(self, rank: int) -> None:
        _local.group, _local.rank = self, rank
        inbox = self._inboxes[rank]
        while True:
            item = inbox.get()
            if item is None:
                return
            task, done = item
            try:
                done.put((rank, (True, task())))
            except BaseException as err:  # noqa: BLE001 - re-raised on the calling thread
                self._barrier.abort()
                done.put((rank, (False, err)))

    def close(self) -> None:
        """Stop the ranks' threads (they are daemons: a process that never calls this still exits)."""
        for inbox in self._inboxes:
            inbox.put(None)
        for thread in self._threads:
            thread.join()
        self._threads, self._inboxes = [], []


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


def check_collectives(manifest: Any, kind: str, same_device: bool = False) -> str:
    """Which collectives the artifact's library calls, where this runtime runs them: "host" (ember's host ones,
    any device kind) or "nccl" (ember's NCCL ones, one GPU per shard); a one-line error otherwise."""
    from .nccl import is_nccl_build

    collectives = manifest.tensor_parallel.collectives
    if collectives.get("all_reduce") == HOST_ALL_REDUCE:
        return "host"
    if is_nccl_build(collectives):
        if kind != "cuda":
            raise InputError.about(f"{{devices}} {kind}: artifact {manifest.name}'s NCCL collectives run on cuda GPUs")
        if same_device:
            raise InputError(f"artifact {manifest.name} calls NCCL collectives, which take one GPU per shard (build "
                             "it with EMBER_TP_COLLECTIVES=host to run every shard on one GPU)")
        return "nccl"
    if collectives.get("all_reduce") == DISCO_ALL_REDUCE:
        raise ArtifactError(f"artifact {manifest.name} calls Disco's collectives ({DISCO_ALL_REDUCE}), for which this "
                            "TVM runtime has no NCCL: compile it again (cuda builds now carry ember's NCCL collectives)")
    raise ArtifactError(f"artifact {manifest.name}: unknown tensor-parallel collectives {collectives!r}")


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
    """One ModelRunner per shard of a tensor-parallel artifact, each driven on a thread of its own (HostGroup):
    cpu builds (or any build with EMBER_TP_COLLECTIVES=host) meet in the host collectives, cuda builds in NCCL,
    one GPU per shard. Every call returns rank 0's result (all ranks compute the same logits; the host collectives'
    are checked to be equal). `same_device`: every shard on the first device named (the one-GPU check, host
    collectives only)."""

    def __init__(self, path: Any, devices: str = "cpu", *, same_device: bool = False,
                 arrays: HostArrays | None = None, **runner_options: Any) -> None:
        from .artifact import read_manifest
        from .loader import load_artifact

        manifest = read_manifest(path)
        tp = check_manifest(manifest)
        kind, ids = parse_devices(devices)
        self.collectives = check_collectives(manifest, kind, same_device)
        ids = [ids[0]] * tp.shards if same_device else check_devices(manifest, kind, ids)
        candidates = None
        if self.collectives == "nccl":  # before any weight moves: NCCL must be there
            from .nccl import library_candidates

            candidates = library_candidates()
        self.manifest, self.group = manifest, HostGroup(tp.shards, arrays)
        self.devices = [f"{kind}:{i}" for i in ids]
        self.nccl: Any = None
        loaded = [load_artifact(path, device=dev, shard=rank) for rank, dev in enumerate(self.devices)]
        if self.collectives == "nccl":
            from .loader import library_module
            from .nccl import NcclFunctions, NcclGroup

            library = path_of(path, manifest)
            self.nccl = NcclGroup(NcclFunctions.of(library_module(library), str(library)), ids, self.group.run,
                                  candidates)
            self.group.on_stuck = self.nccl.fail  # a failed shard's peers would wait in NCCL for it forever
        self._loaded = loaded
        self.runners = self._runners(runner_options)

    def _runners(self, runner_options: dict[str, Any]) -> list[Any]:
        from .model_runner import ModelRunner

        # each shard's KV cache made on its own thread (its device current there)
        return self._run([lambda a=a: ModelRunner(a, **runner_options) for a in self._loaded])

    def sibling(self, **runner_options: Any) -> ShardedRunner:
        """Another runner (its own KV caches, sized by `runner_options`) over the same loaded shards, threads and
        communicators: what `ember serve` makes beside the Engine's own (ModelRunner(engine.artifact, ...))."""
        other = object.__new__(ShardedRunner)
        other.__dict__.update({k: v for k, v in self.__dict__.items() if k != "runners"})
        other.runners = other._runners(runner_options)
        return other

    def _run(self, tasks: list[Callable[[], Any]]) -> list[Any]:
        if self.nccl is not None:
            self.nccl.check()  # one line, where a shard's failure aborted the communicators
        return self.group.run(tasks)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> Any:
        results = self._run([lambda r=r: getattr(r, method)(*args, **kwargs) for r in self.runners])
        if self.collectives != "host":  # NCCL's sums are the same on every rank, but no contract says bit for bit
            return results[0]
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
    def vocab_size(self) -> int:
        return self.runners[0].vocab_size

    @property
    def name(self) -> str:
        return self.runners[0].name

    @property
    def prefill_chunk_size(self) -> int:
        return self.runners[0].prefill_chunk_size

    @property
    def kv(self) -> ShardedKV:
        return ShardedKV([r.kv for r in self.runners])

    @property
    def max_batch_size(self) -> int:
        return self.runners[0].max_batch_size

    @property
    def _tvm(self) -> Any:
        return self.runners[0]._tvm

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
        if self.collectives == "host":
            return self._each("decode", seq_ids, tokens)
        # NCCL: only rank 0's logits come to the host; the others' stay on their GPUs
        first, *others = self.runners
        return self._run([lambda: first.decode(seq_ids, tokens, reuse=reuse),
                               *(lambda r=r: r._decode_step(seq_ids, tokens) for r in others)])[0]

    def add_sequence(self, seq_id: int) -> None:
        for runner in self.runners:
            runner.add_sequence(seq_id)

    def remove_sequence(self, seq_id: int) -> None:
        for runner in self.runners:
            runner.remove_sequence(seq_id)

    def fork_sequence(self, parent: int, child: int) -> None:
        for runner in self.runners:
            runner.fork_sequence(parent, child)

    def reset(self) -> None:
        for runner in self.runners:
            runner.reset()

    def close(self) -> None:
        """The NCCL communicators freed and the shards' threads stopped (the process exiting does both, too)."""
        if self.nccl is not None:
            self.nccl.close()
            self.nccl = None
        self.group.close()


class ShardedKV:
    """The shards' paged KV caches as the server sees one (serving/core.py): facts from shard 0 (every shard has
    the same pages and sequences, of its own heads), forks on every shard."""

    def __init__(self, caches: list[Any]) -> None:
        self._caches = caches

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._caches[0], name)
        if callable(value):
            raise AttributeError(f"ShardedKV.{name}: only fork_sequence runs on every shard")
        return value

    def fork_sequence(self, parent: int, child: int, pos: int | None = None) -> None:
        for cache in self._caches:
            cache.fork_sequence(parent, child, pos)


def path_of(path: Any, manifest: Any) -> Any:
    from pathlib import Path

    return Path(path) / manifest.library
