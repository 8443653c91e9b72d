"""runtime/nccl.py without a GPU: where libnccl is looked for, NCCL's version codes, ranks per GPU, and a group's
start-up (one unique id handed to every rank, every rank's init at once on its own thread) over fake library
functions; every failure is one line."""
import threading

import pytest

from ember.errors import ArtifactError, InputError
from ember.runtime.nccl import (LIBRARY, NcclFunctions, NcclGroup, library_candidates, open_nccl, rank_plan,
                                version_text)
from ember.runtime.tensor_parallel import HostGroup


def test_library_candidates(tmp_path):
    wheel = tmp_path / "libnccl.so.2"
    wheel.write_bytes(b"")
    assert library_candidates({}, lambda: wheel) == [str(wheel), LIBRARY]  # the wheel's, then the system's
    assert library_candidates({}, lambda: None) == [LIBRARY]
    assert library_candidates({"EMBER_NCCL_LIBRARY": str(wheel)}, lambda: None) == [str(wheel)]
    with pytest.raises(InputError, match=r"EMBER_NCCL_LIBRARY=.*nope.so: no such file"):
        library_candidates({"EMBER_NCCL_LIBRARY": str(tmp_path / "nope.so")}, lambda: wheel)


def test_version_codes_and_rank_plan():
    assert version_text(22809) == "2.28.9" and version_text(21903) == "2.19.3" and version_text(2803) == "2.8.3"
    assert rank_plan([2, 3]) == [(0, 2, 2), (1, 2, 3)]
    with pytest.raises(InputError, match="one rank per GPU, and cuda:1,1 names one twice"):
        rank_plan([1, 1])


class FakeLibrary:
    """The library's set-up functions: init waits for every rank (as ncclCommInitRank does)."""

    def __init__(self, ranks, fail_open=(), fail_init=None):
        self.fail_open, self.fail_init = set(fail_open), fail_init
        self.barrier = threading.Barrier(ranks, timeout=10)
        self.inits, self.destroyed, self.opened, self.aborted = [], [], [], []

    def functions(self):
        return NcclFunctions(self.open, lambda: b"\x07" * 128, self.init, self.destroyed.append, self.aborted.append)

    def open(self, path):
        if path in self.fail_open:
            raise RuntimeError(f"ember_tp_nccl_open: cannot load {path}: no such file")
        self.opened.append(path)
        return 22809

    def init(self, rank, ranks, device, unique_id):
        if rank == self.fail_init:
            self.barrier.abort()  # as NCCL's bootstrap gives up on the others
            raise RuntimeError("ember_tp_nccl_init: ncclCommInitRank failed: unhandled cuda error (ncclResult_t 1)")
        self.barrier.wait()  # every rank in its own thread, at once
        self.inits.append((rank, ranks, device, unique_id, threading.current_thread().name))


def test_group_hands_one_unique_id_to_every_rank_at_once():
    fake = FakeLibrary(2, fail_open={"/first/libnccl.so.2"})
    group = HostGroup(2)
    nccl = NcclGroup(fake.functions(), [4, 5], group.run, candidates=["/first/libnccl.so.2", LIBRARY])
    assert (nccl.library, nccl.version) == (LIBRARY, "2.28.9")
    assert sorted(i[:4] for i in fake.inits) == [(0, 2, 4, b"\x07" * 128), (1, 2, 5, b"\x07" * 128)]
    assert sorted(i[4] for i in fake.inits) == ["ember-tp-0", "ember-tp-1"]
    nccl.close()
    assert fake.destroyed == [4, 5]
    group.close()


def test_group_failures_are_one_line():
    fake = FakeLibrary(2, fail_open={"/a.so", "/b.so"})
    with pytest.raises(ArtifactError, match=r"NCCL not found.*cannot load /a.so.*; .*cannot load /b.so") as err:
        open_nccl(fake.functions(), ["/a.so", "/b.so"])
    assert "\n" not in str(err.value)
    fake = FakeLibrary(2, fail_init=1)  # rank 1 fails; rank 0's wait breaks
    with pytest.raises(ArtifactError, match=r"NCCL 2.28.9 could not start 2 ranks on cuda:0,1: .*ncclCommInitRank "
                                            r"failed: unhandled cuda error") as err:
        NcclGroup(fake.functions(), [0, 1], HostGroup(2).run, candidates=[LIBRARY])
    assert "\n" not in str(err.value)


def test_a_failed_shard_aborts_every_communicator_and_spends_the_group():
    fake = FakeLibrary(2)
    nccl = NcclGroup(fake.functions(), [4, 5], HostGroup(2).run, candidates=[LIBRARY])
    nccl.check()  # nothing failed yet
    nccl.fail(1, RuntimeError("Traceback (most recent call last):\n  ...\nCUDA error: out of memory"))
    nccl.fail(0, RuntimeError("a second report"))  # the first failure is the one kept, aborted once
    assert fake.aborted == [4, 5]
    with pytest.raises(ArtifactError, match=r"aborted after shard 1 failed \(CUDA error: out of memory\): load the "
                                            r"artifact again") as err:
        nccl.check()
    assert "\n" not in str(err.value)


def test_missing_setup_functions_name_the_library():
    class Module:
        def get_function(self, name, query_imports=False):
            return None if name == "ember_tp_nccl_init" else (lambda *a: None)

    with pytest.raises(ArtifactError, match="model.so: has no ember_tp_nccl_init: its NCCL collectives are missing"):
        NcclFunctions.of(Module(), "model.so")


def test_sharded_runner_starts_nccl_on_its_gpus_and_drives_each_shard_on_its_thread(monkeypatch, tmp_path):
    """The cuda path of ShardedRunner with the GPU parts faked: NCCL looked for before any load, each shard loaded
    on its GPU, one communicator per GPU started on the ranks' threads, each shard's runner made and called on
    its own thread, rank 0's logits returned."""
    from types import SimpleNamespace

    import numpy as np

    import ember.runtime.artifact as artifact
    import ember.runtime.loader as loader
    import ember.runtime.model_runner as model_runner
    import ember.runtime.nccl as nccl
    import ember.runtime.tensor_parallel as tp
    from ember.runtime.artifact import TensorParallelInfo

    events = []
    info = TensorParallelInfo(shards=2, layout={"w": "column"}, shard_dirs=["params/shard-0-of-2", "params/shard-1-of-2"],
                              collectives=dict(nccl.COLLECTIVES), rank_values={})
    manifest = SimpleNamespace(name="tiny", params=[SimpleNamespace(name="w")], tensor_parallel=info,
                               target=SimpleNamespace(kind="cuda"), library="model.so")
    fake = FakeLibrary(2)
    monkeypatch.setattr(artifact, "read_manifest", lambda path: manifest)
    monkeypatch.setattr(tp, "_device_count", lambda kind: 4)
    monkeypatch.setattr(nccl, "library_candidates", lambda: events.append("candidates") or [LIBRARY])
    monkeypatch.setattr(loader, "load_artifact", lambda path, device, shard: events.append(("load", device, shard))
                        or SimpleNamespace(device=device, shard=shard))

    class Module:
        def get_function(self, name, query_imports=False):
            return {"ember_tp_nccl_open": fake.open, "ember_tp_nccl_unique_id": lambda: b"\x01" * 128,
                    "ember_tp_nccl_init": fake.init, "ember_tp_nccl_destroy": fake.destroyed.append}[name]

    monkeypatch.setattr(loader, "library_module", lambda lib: Module())

    class Runner:
        def __init__(self, loaded, **options):
            self.loaded, self.options, self.thread = loaded, options, threading.current_thread().name

        def prefill(self, seq_ids, tokens, all_logits=False):
            assert threading.current_thread().name == self.thread  # every call on the shard's own thread
            return np.full((1, 4), float(self.loaded.shard))

        def decode(self, seq_ids, tokens, reuse=False):
            assert self.loaded.shard == 0  # the others' logits stay on their GPUs
            return np.full((1, 4), 7.0)

        def _decode_step(self, seq_ids, tokens):
            assert threading.current_thread().name == self.thread
            return "device logits"

    monkeypatch.setattr(model_runner, "ModelRunner", Runner)
    runner = tp.ShardedRunner(tmp_path, "cuda:2-3", max_batch_size=3)
    assert events == ["candidates", ("load", "cuda:2", 0), ("load", "cuda:3", 1)]
    assert sorted(i[:3] for i in fake.inits) == [(0, 2, 2), (1, 2, 3)]
    assert [r.thread for r in runner.runners] == ["ember-tp-0", "ember-tp-1"]
    assert runner.runners[1].options == {"max_batch_size": 3}
    assert runner.prefill([0], [[1, 2]]).tolist() == [[0.0] * 4]  # rank 0's (NCCL's: not compared bit for bit)
    assert runner.decode([0], [3], reuse=True).tolist() == [[7.0] * 4]
    runner.close()
    assert fake.destroyed == [2, 3]
    with pytest.raises(InputError, match="take one GPU per shard"):
        tp.ShardedRunner(tmp_path, "cuda:0", same_device=True)
