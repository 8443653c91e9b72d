"""The serving engine's device sampling (runtime/serving/device_sampling.py) on the tiny cpu artifact, with
device_sampler_model's numpy stand-in for cuda's sample kernels: the device path gives the host path's tokens
(greedy, penalties through preemption, logit_bias, grammar masks) and log-probabilities; each sequence keeps its
slot, seed and step; only the parameter rows go and the ids come back per decode step. The stand-in's kernel math
(bias and mask in place, the log-probabilities' radix select) is checked against the host path's own functions."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import tvm

from device_sampler_model import FIELD, FakeDeviceSampler, logprob_rows, prepare
from ember.runtime.model_runner import ModelRunner
from ember.runtime.sampler import (DEVICE_EXT_PARAMS, DEVICE_LOGPROB_COLS, DEVICE_PARAMS, SamplingParams,
                                   device_params)
from ember.runtime.serving.async_engine import AsyncEngine
from ember.runtime.serving.device_sampling import DeviceSampling, pack_bias, unpack_logprobs
from ember.runtime.serving.sampling import adjusted_row, logprob_of
from ember.runtime.serving.sequence import Request, Sequence


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def fake(monkeypatch):
    """Every ModelRunner made in the test gets the stand-in sampler (ext and restore unless the test says)."""
    sampler = FakeDeviceSampler()
    sampler.options = {}
    original = ModelRunner.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        sampler.install(self, **sampler.options)

    monkeypatch.setattr(ModelRunner, "__init__", init)
    return sampler


def serve(tiny, requests, device: bool, **load):
    """Submit every request at once; their outputs in order, and the engine's stats."""
    async def go():
        with AsyncEngine.load(tiny.path, device_sampling=device, **load) as engine:
            assert engine.samples_on_device == device
            outs = await asyncio.gather(*(engine.complete(prompt, **kw) for prompt, kw in requests))
            return outs, engine.stats(), engine.core.sampling
    return run(go())


def test_device_path_gives_the_host_paths_tokens_with_penalties_through_preemption(tiny, fake, prompt_ids):
    penalized = dict(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.3)
    requests = [(prompt_ids(20, seed=300 + i), dict(max_tokens=40, **(penalized if i % 2 else {})))
                for i in range(8)]
    load = dict(max_seqs=8, kv_tokens=128)  # 8 sequences of up to 60 tokens need 32 pages; the cache has 8
    want, _, _ = serve(tiny, requests, device=False, **load)
    got, stats, sampling = serve(tiny, requests, device=True, **load)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert stats["preempted"] > 0
    restored = [c for c in fake.calls if c[0] == "restore"]
    assert restored and all(len(c[3]) > c[2] for c in restored)  # preempted ones came back with their counts
    assert all(c[0] == "ext" for c in fake.calls if c[0] not in ("reset", "restore"))
    assert not sampling.slots.held


def test_each_sequence_keeps_its_slot_seed_and_step(tiny, fake, prompt_ids):
    requests = [(prompt_ids(5 + i, seed=i), dict(max_tokens=12, temperature=1.0, top_p=0.9, ignore_eos=True,
                                                 **({"seed": 1000 + i} if i < 3 else {}))) for i in range(6)]
    outs, _, sampling = serve(tiny, requests, device=True, max_seqs=4)  # two of them wait for a slot
    seen: dict[int, list[tuple[int, int]]] = {}  # seed -> (slot, step) per call
    for call in fake.calls:
        if call[0] != "ext":
            continue
        ints = call[1].view(np.int32)
        slots = ints[:, FIELD["slot"]]
        assert len(set(slots.tolist())) == len(slots) and slots.min() >= 0 and slots.max() < 4 + 4
        for row in ints:
            seed = int(np.uint32(row[FIELD["seed_lo"]])) | int(np.uint32(row[FIELD["seed_hi"]])) << 32
            seen.setdefault(seed, []).append((int(row[FIELD["slot"]]), int(row[FIELD["step"]])))
    assert len(seen) == 6 and {1000, 1001, 1002} <= set(seen)  # unseeded requests draw distinct random seeds
    for seed, calls in seen.items():
        assert [step for _, step in calls] == list(range(12))  # one draw per token, the first after the prefill
        assert len({slot for slot, _ in calls}) == 1
    assert all(len(o.token_ids) == 12 for o in outs) and not sampling.slots.held


def test_seeded_requests_reproduce_batched_or_not(tiny, fake, prompt_ids):
    prompt = prompt_ids(7, seed=3)
    options = dict(max_tokens=20, temperature=1.0, top_p=0.9, seed=11)
    alone, _, _ = serve(tiny, [(prompt, options)], device=True, max_seqs=4)
    others = [(prompt_ids(9, seed=s), options) for s in range(3)]
    batched, _, _ = serve(tiny, [(prompt, options)] + others + [(prompt, {**options, "seed": 12})], device=True,
                          max_seqs=4)
    assert batched[0].token_ids == alone[0].token_ids
    assert batched[-1].token_ids != alone[0].token_ids


def test_bias_grammar_and_logprobs_on_the_device_match_the_host(tiny, fake, prompt_ids):
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("llguidance")
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no", "maybe"]}, "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    requests = [("hello", dict(max_tokens=40, response_format=fmt, logprobs=4)),
                (prompt_ids(6, seed=1), dict(max_tokens=10, logit_bias={100: 5.0, 7: -100.0, 42: 2.5}, logprobs=20)),
                (prompt_ids(8, seed=2), dict(max_tokens=10, logprobs=0)),
                (prompt_ids(8, seed=4), dict(max_tokens=10))]
    want, _, _ = serve(tiny, requests, device=False, max_seqs=4)
    got, _, _ = serve(tiny, requests, device=True, max_seqs=4)
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        assert (g.logprobs is None) == (w.logprobs is None)
        for a, b in zip(g.logprobs or [], w.logprobs or []):
            assert a.token_id == b.token_id and abs(a.logprob - b.logprob) < 1e-5
            assert [i for i, _ in a.top] == [i for i, _ in b.top]
            assert np.allclose([v for _, v in a.top], [v for _, v in b.top], atol=1e-5)
    assert got[0].finish_reason == "stop"
    jsonschema.validate(json.loads(got[0].text), schema)
    masked = [c for c in fake.calls if c[0] == "ext" and (c[1].view(np.int32)[:, FIELD["mask"]] >= 0).any()]
    assert masked, "the grammar's mask went to the device"


def test_rows_the_artifact_cannot_sample_go_to_the_host_beside_device_rows(tiny, fake, prompt_ids):
    fake.options = {"ext": False, "restore": False}  # an older cuda build: `sample` and `sample_reset` only
    requests = [(prompt_ids(6, seed=1), dict(max_tokens=8, logit_bias={100: 5.0})),
                (prompt_ids(6, seed=2), dict(max_tokens=8, logprobs=2)),
                (prompt_ids(6, seed=3), dict(max_tokens=8, repetition_penalty=1.5)),
                (prompt_ids(6, seed=4), dict(max_tokens=8))]
    want, _, _ = serve(tiny, requests, device=False, max_seqs=4)
    got, _, sampling = serve(tiny, requests, device=True, max_seqs=4)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [lp.token_id for lp in got[1].logprobs] == got[1].token_ids
    rows = [c[1] for c in fake.calls if c[0] == "sample"]
    assert rows and all(r.shape[1] == DEVICE_PARAMS for r in rows)


def test_only_the_rows_go_and_the_ids_come_back_per_decode_step(tiny, fake, prompt_ids, monkeypatch):
    seen = []
    for name in ("copyfrom", "copyto"):
        original = getattr(tvm.runtime.Tensor, name)

        def wrapped(self, other, _name=name, _original=original):
            if getattr(fake, "inside", False):
                return _original(self, other)
            seen.append((_name, tuple(self.shape)))
            fake.inside = True  # copyfrom(a Tensor) is other.copyto(self): one copy
            try:
                return _original(self, other)
            finally:
                fake.inside = False

        monkeypatch.setattr(tvm.runtime.Tensor, name, wrapped)
    for method in ("sample_ext", "reset"):  # the stand-in's own copies are not the runner's
        inner = getattr(fake, method)

        def quiet(*args, _inner=inner):
            fake.inside = True
            try:
                return _inner(*args)
            finally:
                fake.inside = False

        setattr(fake, method, quiet)
    steps = 24
    outs, _, sampling = serve(tiny, [(prompt_ids(8), dict(max_tokens=steps + 1, ignore_eos=True))], device=True,
                              max_seqs=2)
    vocab = sampling.runner.vocab_size
    assert len(outs[0].token_ids) == steps + 1
    assert not [c for c in seen if vocab in c[1] and c[0] == "copyto"]  # no logits come to the host
    assert seen.count(("copyfrom", (1, DEVICE_EXT_PARAMS))) == steps + 1  # the rows: first token + each step
    assert seen.count(("copyto", (1,))) == steps + 1  # the ids
    assert seen.count(("copyfrom", (1, 1))) == 1  # ids go once: later steps decode the ids already there


# -- the parts: packing, the stand-in's kernel math against the host path ---------------------------------------
class StubRunner:
    max_batch_size, vocab_size, has_sample_ext, has_restore, has_device_sampler = 4, 100, True, True, True

    def __init__(self):
        self.restored = []

    def restore_penalties(self, slot, prompt, generated):
        self.restored.append((slot, list(prompt), list(generated)))


class StubConstraint:
    def __init__(self, allowed):
        self.allowed = allowed
        self.done = False

    def fill_mask(self, words):
        bits = np.zeros(words.size * 32, np.uint8)
        bits[self.allowed] = 1
        words[:] = np.packbits(bits, bitorder="little").view(np.int32)

    def mask(self, row):
        out = np.full_like(row, -np.inf)
        out[self.allowed] = row[self.allowed]
        return out

    def copy(self):
        return self


def sequence(seq_id, prompt, **request):
    sampling = request.pop("sampling", SamplingParams())
    request.setdefault("constraint", None)
    return Sequence(seq_id, Request(f"r{seq_id}", prompt, 10, sampling, **request), None, [], 64, lambda out: None)


def test_rows_pack_masks_bias_and_each_rows_fields():
    stub = StubRunner()
    ds = DeviceSampling(stub)
    seqs = [sequence(0, [1, 2, 3], constraint=StubConstraint([5, 6, 70])),
            sequence(1, [4], logit_bias={9: 1.5, 3: -2.0}, logprobs=3,
                     sampling=SamplingParams(temperature=0.7, seed=5, repetition_penalty=1.2)),
            sequence(2, [7, 8], constraint=StubConstraint([1]), logit_bias={1: 0.5}),
            sequence(3, [9])]
    seqs[3].device = False  # sampled on the host: the neutral row
    for s in seqs[:3]:
        s.device = True
        ds.admit(s)
    seqs[1].tokens += [11, 12]  # two generated: step 2
    rows, aux, logprobs = ds.rows(seqs)
    ints = rows.view(np.int32)
    assert rows.shape == (4, DEVICE_EXT_PARAMS) and logprobs
    assert ints[:3, FIELD["slot"]].tolist() == [0, 1, 2] and ints[:, FIELD["step"]].tolist() == [0, 2, 0, 0]
    want = device_params(SamplingParams(temperature=0.7, seed=5, repetition_penalty=1.2), 5, 1, 2)
    assert np.array_equal(rows[1, :DEVICE_PARAMS], want)  # flags: counts updated for the penalized row only
    assert ints[0, FIELD["flags"]] == 0 and ints[3].tolist() == ds.table[ds.neutral].view(np.int32).tolist()
    words = (stub.vocab_size + 31) // 32
    for i, allowed in ((0, [5, 6, 70]), (2, [1])):
        at = ints[i, FIELD["mask"]]
        bits = np.unpackbits(aux[at : at + words].view(np.uint8), bitorder="little")
        assert np.flatnonzero(bits).tolist() == allowed
    for i, bias in ((1, {9: 1.5, 3: -2.0}), (2, {1: 0.5})):
        at, n = ints[i, FIELD["bias"]], ints[i, FIELD["nbias"]]
        pairs = aux[at : at + 2 * n]
        assert dict(zip(pairs[0::2].tolist(), pairs[1::2].view(np.float32).tolist())) == bias
    assert ints[[0, 3], FIELD["mask"]].tolist() == [0, -1] and ints[[0, 3], FIELD["nbias"]].tolist() == [0, 0]
    assert ints[:, FIELD["logprobs"]].tolist() == [-1, 3, -1, -1]
    assert stub.restored == [(1, [4], [])]  # only the penalized one resets its slot
    ds.release(seqs[1])
    assert ds.slots.take() == 1


def test_prepare_model_is_the_host_rows_bias_then_mask():
    rng = np.random.default_rng(5)
    vocab = 300
    for trial in range(20):
        logits = (rng.standard_normal((1, vocab)) * 4).astype(np.float32)
        allowed = np.flatnonzero(rng.random(vocab) < 0.3) if trial % 3 else None
        bias = {int(t): float(rng.uniform(-100, 100)) for t in rng.choice(vocab, size=int(rng.integers(1, 12)),
                                                                       replace=False)} if trial % 2 else None
        seq = sequence(0, [1], logit_bias=bias, constraint=StubConstraint(allowed) if allowed is not None else None)
        row = np.zeros((1, DEVICE_EXT_PARAMS), np.float32)
        ints = row.view(np.int32)
        ints[0, FIELD["mask"]], ints[0, FIELD["bias"]], ints[0, FIELD["nbias"]] = -1, 0, 0
        aux = np.zeros(0, np.int32)
        if allowed is not None:
            aux = np.zeros((vocab + 31) // 32, np.int32)
            seq.request.constraint.fill_mask(aux)
            ints[0, FIELD["mask"]] = 0
        if bias:
            ints[0, FIELD["bias"]], ints[0, FIELD["nbias"]] = aux.size, len(bias)
            aux = np.concatenate([aux, pack_bias(seq.bias)])
        got = logits.copy()
        prepare(got, row, aux)
        assert np.array_equal(got[0], adjusted_row(seq, logits[0]))


def test_logprob_model_is_logprob_of_with_ties_and_masks():
    rng = np.random.default_rng(6)
    vocab = 500
    for trial in range(40):
        x = np.round(rng.standard_normal(vocab) * 3, 1 if trial % 2 else 4).astype(np.float32)  # many ties
        if trial % 4 == 1:
            x[rng.random(vocab) < 0.97] = -np.inf  # a mask that leaves fewer than k
        x[rng.integers(vocab)] = np.float32(-0.0) if trial % 5 == 0 else x[0]
        k = int(rng.integers(0, 21))
        row = np.zeros((1, DEVICE_EXT_PARAMS), np.float32)
        row.view(np.int32)[0, FIELD["logprobs"]] = k
        token = int(rng.choice(np.flatnonzero(np.isfinite(x))))
        out = logprob_rows(x[None], row, np.array([token]))
        assert out.shape == (1, DEVICE_LOGPROB_COLS)
        got, want = unpack_logprobs(out[0], token, k), logprob_of(x, token, k)
        assert got.token_id == want.token_id and abs(got.logprob - want.logprob) < 1e-5
        assert [i for i, _ in got.top] == [i for i, _ in want.top], trial
        assert np.allclose([v for _, v in got.top], [v for _, v in want.top], atol=1e-5)
