"""The tensor-parallel runtime's checks without a model: --devices parsing, devices against the manifest's shards
(one-line errors), which collectives run where, the per-shard random fill, and the host collectives of a group of
threads."""
from types import SimpleNamespace

import numpy as np
import pytest

from ember.errors import ArtifactError, InputError
from ember.runtime.artifact import ParamInfo, TensorParallelInfo
from ember.runtime.random_weights import NumpyFill
from ember.runtime.tensor_parallel import (HostGroup, check_collectives, check_devices, check_manifest, parse_devices,
                                           shard_random_fill)


def manifest(shards=4, kind="cuda", all_reduce="ember_tp_nccl_allreduce"):
    params = [ParamInfo("w", [4, 8], "float32"), ParamInfo("b", [8], "float32"), ParamInfo("start", [1], "int32")]
    tp = TensorParallelInfo(shards=shards, layout={"w": "column", "b": "replicated", "start": "rank"},
                            shard_dirs=[f"params/shard-{r}-of-{shards}" for r in range(shards)],
                            collectives={"all_reduce": all_reduce}, rank_values={"start": 40})
    return SimpleNamespace(name="tiny", params=params, tensor_parallel=tp, target=SimpleNamespace(kind=kind))


def test_devices_parse_ranges_and_lists():
    assert parse_devices("cuda:0-3") == ("cuda", [0, 1, 2, 3])
    assert parse_devices("cuda:0,2,5-6") == ("cuda", [0, 2, 5, 6])
    assert parse_devices("cpu") == ("cpu", [0])
    for bad, why in (("cuda", "name the GPUs"), ("cuda:3-1", "runs backwards"), ("cuda:0,0", "named twice"),
                     ("tpu:0", "expected cuda:FIRST-LAST"), ("cuda:a", "expected")):
        with pytest.raises(InputError, match=why) as err:
            parse_devices(bad)
        assert err.value.cli_message.startswith("--devices")


def test_devices_are_checked_against_the_shards_in_one_line():
    m = manifest()
    assert check_devices(m, "cuda", [0, 1, 2, 3], count=lambda kind: 8) == [0, 1, 2, 3]
    with pytest.raises(InputError, match="2 GPUs given, artifact tiny has 4 tensor-parallel shards"):
        check_devices(m, "cuda", [0, 1], count=lambda kind: 8)
    with pytest.raises(InputError, match="cuda:3 does not exist: this machine has 1 GPU, artifact tiny needs 4"):
        check_devices(m, "cuda", [0, 1, 2, 3], count=lambda kind: 1)
    with pytest.raises(InputError, match="was built for cuda"):
        check_devices(m, "cpu", [0])
    m.tensor_parallel.shard_dirs.pop()
    with pytest.raises(ArtifactError, match="lists 3 shard folders for 4 shards"):
        check_manifest(m)


def test_collectives_are_checked_against_the_devices_in_one_line():
    assert check_collectives(manifest(), "cuda") == "nccl"
    assert check_collectives(manifest(kind="cpu", all_reduce="ember.tp.host_allreduce"), "cpu") == "host"
    assert check_collectives(manifest(all_reduce="ember.tp.host_allreduce"), "cuda", same_device=True) == "host"
    with pytest.raises(InputError, match="take one GPU per shard"):
        check_collectives(manifest(), "cuda", same_device=True)
    with pytest.raises(InputError, match="NCCL collectives run on cuda GPUs") as err:
        check_collectives(manifest(), "cpu")
    assert err.value.cli_message.startswith("--devices cpu")
    # cuda builds of before the NCCL module named Disco's, which this TVM wheel cannot run
    with pytest.raises(ArtifactError, match=r"Disco's collectives \(runtime.disco.allreduce\).*compile it again"):
        check_collectives(manifest(all_reduce="runtime.disco.allreduce"), "cuda")


def test_random_fill_per_shard():
    m = manifest()
    fills = [shard_random_fill(lambda seed: NumpyFill(seed), m, rank) for rank in range(2)]
    import tvm

    made = [[f(p, i, tvm.cpu()) for i, p in enumerate(m.params)] for f in fills]
    w0, w1 = (made[r][0].numpy() for r in range(2))
    assert not np.array_equal(w0, w1)  # split: each shard its own
    np.testing.assert_array_equal(made[0][1].numpy(), made[1][1].numpy())  # replicated: the same
    assert [made[r][2].numpy().tolist() for r in range(2)] == [[0], [40]]


def test_host_group_sums_in_rank_order_and_a_failing_rank_stops_all():
    group = HostGroup(3)
    out = group.run([lambda r=r: group.exchange(r, np.full(2, r + 1.0), sum) for r in range(3)])
    assert [o.tolist() for o in out] == [[6.0, 6.0]] * 3

    def fail():
        raise ValueError("rank 1 failed")

    with pytest.raises(ValueError, match="rank 1 failed"):
        group.run([lambda: group.exchange(0, np.zeros(1), sum), fail, lambda: group.exchange(2, np.zeros(1), sum)])


def test_host_group_keeps_one_thread_per_rank_across_calls():
    import threading

    group = HostGroup(2)
    first = group.run([threading.get_ident, threading.get_ident])
    assert len(set(first)) == 2 and group.run([threading.get_ident, threading.get_ident]) == first
    group.close()
    assert len(set(group.run([threading.get_ident] * 2))) == 2  # started again after close
    group.close()


def test_host_group_unblocks_ranks_left_waiting_by_a_failed_one():
    """NCCL's case: rank 0 fails while rank 1 waits (in a collective, for rank 0) and breaks no barrier; after
    grace_s, on_stuck gets rank 0's error (NcclGroup.fail aborts the communicators, which ends the wait)."""
    import threading

    released = threading.Event()
    calls = []

    def on_stuck(rank, err):
        calls.append((rank, str(err)))
        released.set()

    def fail():
        raise ValueError("out of memory on shard 0")

    group = HostGroup(2, on_stuck=on_stuck, grace_s=0.2)
    with pytest.raises(ValueError, match="out of memory on shard 0"):
        group.run([fail, lambda: released.wait(30)])
    assert calls == [(0, "out of memory on shard 0")]
    stuck = threading.Event()  # a rank the abort does not free: given up on after grace_s more
    group = HostGroup(2, on_stuck=lambda rank, err: None, grace_s=0.2)
    with pytest.raises(ValueError, match="out of memory on shard 0"):
        group.run([fail, lambda: stuck.wait(30)])
    stuck.set()
    calls.clear()
    group = HostGroup(2, on_stuck=on_stuck, grace_s=5)
    with pytest.raises(ValueError, match="out of memory"):  # every rank failed: nothing to unblock
        group.run([fail, fail])
    assert calls == []
