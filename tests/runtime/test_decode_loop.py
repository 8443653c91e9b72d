"""No host work per token in the decode loop: over N steps, what crosses between host and device (TVM Tensor
copies counted) and what the device sampler is given, with the tiny cpu artifact and a recording stand-in for the
cuda builds' `sample` kernels (cpu artifacts have none)."""
from __future__ import annotations

import numpy as np
import pytest
import tvm

from ember.runtime.engine import Engine
from ember.runtime.generate import generate
from ember.runtime.sampler import STEP, SamplingParams

STEPS = 24


@pytest.fixture
def copies(monkeypatch):
    """Every Tensor.copyfrom / copyto while counting is on: (method, shape of the destination or source)."""
    seen = Copies()
    on = seen.on
    for name in ("copyfrom", "copyto"):
        original = getattr(tvm.runtime.Tensor, name)

        def wrapped(self, other, _name=name, _original=original):
            if not on[0]:
                return _original(self, other)
            seen.append((_name, tuple(self.shape)))
            on[0] = False  # copyfrom(a Tensor) is other.copyto(self): one copy
            try:
                return _original(self, other)
            finally:
                on[0] = True

        monkeypatch.setattr(tvm.runtime.Tensor, name, wrapped)
    return seen


class Copies(list):
    def __init__(self):
        super().__init__()
        self.on = [True]


class RecordingSampler:
    """sample(logits, params, counts, ids, info): greedy into `ids` on the device, recording each call's params."""

    def __init__(self, copies):
        self.copies, self.params, self.ids_seen = copies, [], []

    def sample(self, logits, params, counts, ids, info):
        self.copies.on[0] = False  # the stand-in's own copies are not the runner's
        self.params.append(params.numpy().copy())
        ids.copyfrom(np.argmax(logits.numpy()[:, 0, :], axis=-1).astype(np.int32))
        self.ids_seen.append(ids)
        self.copies.on[0] = True
        return ids, info

    def reset(self, counts, prompt, slot):
        return counts


@pytest.fixture
def runner(tiny):
    return Engine.load(tiny.path, device="cpu", max_batch_size=2).runner


def with_device_sampler(runner, copies):
    fake = RecordingSampler(copies)
    runner._sample, runner._sample_reset = fake.sample, fake.reset
    return fake


@pytest.mark.parametrize("batch", [1, 2])  # decode1 and the batched decode, one path
def test_device_sampled_ids_stay_on_the_device(runner, copies, prompt_ids, batch):
    fake = with_device_sampler(runner, copies)
    seqs = list(range(batch))
    for s in seqs:
        runner.add_sequence(s)
        runner.reset_penalties(s, prompt_ids(8, s))
    logits = runner.prefill(seqs, [prompt_ids(8, s) for s in seqs])
    buf = runner.set_sampling([(SamplingParams(), 7, s) for s in seqs])
    tokens = runner.decode_sample(seqs, np.argmax(logits, axis=-1), buf)  # the first ids come from the host
    del copies[:]
    for _ in range(STEPS):
        tokens = runner.decode_sample(seqs, tokens, buf)
    # per step: the parameter rows go (their step counter), the sampled ids come back; the ids never go
    assert copies == [("copyfrom", (batch, 12)), ("copyto", (batch,))] * STEPS
    assert all(ids.same_as(buf.ids_dev) for ids in fake.ids_seen)
    assert [int(p.view(np.int32)[0, STEP]) for p in fake.params] == list(range(STEPS + 1))
    assert tokens is buf.ids


def test_device_sampled_decode_matches_host_logits(runner, copies, prompt_ids):
    """The ids decode reads on the device are the sampled ones: the same tokens as argmax of host logits."""
    with_device_sampler(runner, copies)
    prompt = prompt_ids(8)
    runner.add_sequence(0)
    runner.reset_penalties(0, prompt)
    first = int(np.argmax(runner.prefill([0], [prompt])[0]))
    buf = runner.set_sampling([(SamplingParams(), 0, 0)])
    device = []
    tokens = runner.decode_sample([0], [first], buf)
    for _ in range(6):
        device.append(int(tokens[0]))
        tokens = runner.decode_sample([0], tokens, buf)
    runner.reset()
    runner.add_sequence(0)
    token, host = first, []
    runner.prefill([0], [prompt])
    for _ in range(7):
        token = int(np.argmax(runner.decode([0], [token])[0]))
        host.append(token)
    assert device == host[:6]


def test_host_sampled_generation_copies_only_the_step(runner, copies, prompt_ids):
    """cpu artifacts: per token the id goes and the logits come back, into buffers made once (and sampled on
    the host); the tokens are those of argmax over fresh logits."""
    prompt = prompt_ids(8)
    del copies[:]
    result = generate(runner, prompt, max_tokens=STEPS + 1, sampling=SamplingParams())
    decode_copies = [c for c in copies if c in (("copyfrom", (1, 1)), ("copyto", (1, 1, runner.vocab_size)))]
    assert decode_copies == [("copyfrom", (1, 1)), ("copyto", (1, 1, runner.vocab_size))] * STEPS
    assert len(result.token_ids) == STEPS + 1


def test_ids_are_checked_on_every_path(runner, copies):
    runner.add_sequence(0)
    runner.prefill([0], [[1, 2, 3]])
    for bad in ([runner.vocab_size], np.array([-1]), np.array([runner.vocab_size], np.int64)):
        with pytest.raises(Exception, match="outside the vocabulary"):
            runner.decode([0], bad)
