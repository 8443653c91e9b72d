"""Sampler and chunk planning: pure functions checked against hand-worked numbers, the definition of the nucleus,
and transformers' logits warpers."""
from __future__ import annotations

import numpy as np
import pytest

from ember.errors import InputError
from ember.runtime.kv_cache import plan_chunks
from ember.runtime.sampler import (Sampler, SamplingParams, draw, logits_to_probs, nucleus, sample, top_k_mask,
                                   top_p_mask)

LOGITS = np.log(np.array([0.1, 0.4, 0.2, 0.3]))  # softmax gives back these probabilities
F32 = 1e-6  # the sampler works in float32


def test_temperature_zero_is_argmax():
    rng = np.random.default_rng(0)
    logits = np.random.default_rng(1).standard_normal((50, 100))
    params = SamplingParams(temperature=0.0, top_k=3, top_p=0.5, seed=0)
    assert [sample(row, params, rng) for row in logits] == logits.argmax(axis=1).tolist()


def test_top_k_keeps_the_k_largest_and_ties():
    out = top_k_mask(np.array([1.0, 5.0, 3.0, 5.0, 2.0]), 2)
    np.testing.assert_array_equal(out, [-np.inf, 5.0, -np.inf, 5.0, -np.inf])
    out = top_k_mask(np.array([1.0, 4.0, 3.0, 3.0]), 2)  # the tie at the k-th value is kept (as HF does)
    np.testing.assert_array_equal(out, [-np.inf, 4.0, 3.0, 3.0])
    np.testing.assert_array_equal(top_k_mask(LOGITS, 0), LOGITS)
    np.testing.assert_array_equal(top_k_mask(LOGITS, 10), LOGITS)


def test_top_k_distribution():
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=1.0, top_k=2))
    np.testing.assert_allclose(probs, [0, 0.4 / 0.7, 0, 0.3 / 0.7], rtol=F32)


@pytest.mark.parametrize(
    "p, kept",
    [
        (0.3, [1]),  # 0.4 alone reaches 0.3
        (0.4, [1]),  # exactly reached by the first token
        (0.5, [1, 3]),  # 0.4 < 0.5, 0.4 + 0.3 >= 0.5
        (0.7, [1, 3]),
        (0.75, [1, 3, 2]),
        (0.95, [1, 3, 2, 0]),
    ],
)
def test_top_p_nucleus(p, kept):
    probs = np.array([0.1, 0.4, 0.2, 0.3])
    out = top_p_mask(probs, p)
    np.testing.assert_array_equal(np.flatnonzero(out), sorted(kept))
    np.testing.assert_allclose(out[kept], probs[kept])
    full = logits_to_probs(LOGITS, SamplingParams(temperature=1.0, top_p=p))
    np.testing.assert_allclose(full, np.where(out > 0, probs, 0) / probs[kept].sum(), rtol=F32)


def test_temperature_scales_logits():
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=2.0))
    want = np.sqrt([0.1, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(probs, want / want.sum(), rtol=F32)


def test_top_k_then_top_p():
    # top-k 3 keeps (0.4, 0.3, 0.2) renormalised to (4/9, 3/9, 2/9); top-p 0.5 then keeps 4/9 and 3/9
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=1.0, top_k=3, top_p=0.5))
    np.testing.assert_allclose(probs, [0, 4 / 7, 0, 3 / 7], rtol=F32)


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    params = SamplingParams(temperature=1.0, seed=42)
    draws = [sample(LOGITS, params, params.make_rng()) for _ in range(3)]
    assert len(set(draws)) == 1  # a fresh generator with the same seed gives the same token
    rng = params.make_rng()
    seq_a = [sample(LOGITS, params, rng) for _ in range(4000)]
    rng = params.make_rng()
    assert [sample(LOGITS, params, rng) for _ in range(4000)] == seq_a
    freq = np.bincount(seq_a, minlength=4) / len(seq_a)
    np.testing.assert_allclose(freq, [0.1, 0.4, 0.2, 0.3], atol=0.03)
    masked = SamplingParams(temperature=1.0, top_k=2, seed=1)
    rng = masked.make_rng()
    assert set(sample(LOGITS, masked, rng) for _ in range(500)) == {1, 3}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"seed": -3}, "seed must be an integer >= 0"),
    ],
)
def test_bad_sampling_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        SamplingParams(**kwargs)


def test_plan_chunks_without_window():
    assert plan_chunks([10], 4) == [[(0, 0, 4)], [(0, 4, 8)], [(0, 8, 10)]]
    # a forward mixes the tail of one sequence with the head of the next, each sequence at most once
    assert plan_chunks([5, 3, 6], 6) == [[(0, 0, 5), (1, 0, 1)], [(1, 1, 3), (2, 0, 4)], [(2, 4, 6)]]
    assert plan_chunks([2, 2], 8) == [[(0, 0, 2), (1, 0, 2)]]


def test_plan_chunks_with_sliding_window():
    # HF window 5: first chunk <= W - 1 = 4, then chunks must end within the first W tokens, then one at a time
    assert plan_chunks([8], 16, window=5) == [[(0, 0, 4)], [(0, 4, 5)], [(0, 5, 6)], [(0, 6, 7)], [(0, 7, 8)]]
    assert plan_chunks([4], 16, history=[2], window=5) == [[(0, 0, 3)], [(0, 3, 4)]]
    assert plan_chunks([3, 3], 16, history=[0, 9], window=5) == [[(0, 0, 3), (1, 0, 1)], [(1, 1, 2)], [(1, 2, 3)]]
    with pytest.raises(InputError, match="budget >= 1"):
        plan_chunks([3], 0)


def reference_nucleus(w: np.ndarray, p: float) -> np.ndarray:
    """The definition, in float64: most likely first (lower id first on ties), keep while the mass before < p."""
    order = np.argsort(-w.astype(np.float64), kind="stable")
    before = np.cumsum(w[order], dtype=np.float64) - w[order]
    return np.sort(order[before < p * w.sum(dtype=np.float64) * (1 - 1e-6)])


@pytest.mark.parametrize("case", range(40))
def test_nucleus_matches_its_definition_with_deep_cuts_and_ties(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(2, 3000))
    if case % 3 == 0:  # few distinct values: many ties, some straddling the cut
        w = rng.choice(np.array([0.5, 1.0, 2.0, 4.0], np.float32), size=n)
    else:
        w = np.exp(rng.standard_normal(n).astype(np.float32) * rng.uniform(0.1, 4)).astype(np.float32)
    p = float(rng.uniform(0.05, 1.0))
    head = int(rng.choice([2, 16, 64, 1024]))  # small heads force the cuts below the first partition
    np.testing.assert_array_equal(nucleus(w, p, head=head), reference_nucleus(w, p))


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 0.9), (0.7, 40, 1.0), (1.3, 0, 0.95), (0.9, 100, 0.8), (2.0, 0, 0.99), (0.5, 5, 0.5),
])  # fmt: skip
def test_distribution_matches_transformers_logits_warpers(temperature, top_k, top_p):
    import torch
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    logits = (np.random.default_rng(7).standard_normal(4096) * 2.5).astype(np.float32)
    scores = TemperatureLogitsWarper(temperature)(None, torch.tensor(logits)[None])
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    want = torch.softmax(scores, dim=-1)[0].numpy()
    got = logits_to_probs(logits, SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.flatnonzero(got), np.flatnonzero(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_sampler_draws_by_inverse_cdf_across_blocks():
    w = np.zeros(5000, np.float32)
    w[[3, 2100, 4999]] = [1.0, 2.0, 1.0]  # cumulative 1, 3, 4 of 4: blocks 0, 2 and 4
    assert [draw(w, u) for u in (0.0, 0.24, 0.26, 0.74, 0.76, 0.999999)] == [3, 3, 2100, 2100, 4999, 4999]
    assert draw(np.array([2.0, 0.0, 2.0], np.float32), 0.5) == 2  # a point on an edge goes right, past zeros


def test_a_sampler_allocates_nothing_vocabulary_sized_in_float64():
    import tracemalloc

    vocab = 151936
    logits = (np.random.default_rng(3).standard_normal(vocab) * 3).astype(np.float32)
    for params in (SamplingParams(temperature=0.8, seed=0), SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=0),
                   SamplingParams(temperature=0.8, top_p=0.9, seed=0)):  # fmt: skip
        sampler = Sampler(params)
        sampler(logits)  # the scratch buffers are made once
        tracemalloc.start()
        for _ in range(3):
            sampler(logits)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 * vocab, (params, peak)  # boolean masks only: less than one float32 copy


# -- min-p and penalties ------------------------------------------------------------------------------------------
def brute_force_probs(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                      repetition: float = 1.0, presence: float = 0.0, frequency: float = 0.0,
                      prompt=(), generated=()) -> np.ndarray:
    """The definition, written out in float64 with a full sort: penalties, temperature, top-k, top-p, min-p."""
    x = logits.astype(np.float64).copy()
    seen = sorted(set(prompt) | set(generated))
    if repetition != 1.0:
        x[seen] = np.where(x[seen] < 0, x[seen] * repetition, x[seen] / repetition)
    counts = np.bincount(np.asarray(generated, dtype=np.int64), minlength=x.size)
    x -= presence * (counts > 0) + frequency * counts
    x /= temperature
    keep = np.ones(x.size, bool)
    if 0 < top_k < x.size:
        keep &= x >= np.sort(x)[::-1][top_k - 1]
    w = np.where(keep, np.exp(x - x.max()), 0.0)
    if top_p < 1.0:
        order = np.argsort(-w, kind="stable")
        before = np.cumsum(w[order]) - w[order]
        nucleus_ = np.zeros(x.size, bool)
        nucleus_[order[before < top_p * w.sum() * (1 - 1e-6)]] = True
        w = np.where(nucleus_, w, 0.0)
    if min_p > 0.0:
        w = np.where(w >= min_p * w.max(), w, 0.0)
    return w / w.sum()


@pytest.mark.parametrize("case", range(24))
def test_min_p_and_penalties_match_the_definition(case):
    rng = np.random.default_rng(100 + case)
    vocab = int(rng.integers(50, 3000))
    logits = (rng.standard_normal(vocab) * rng.uniform(0.5, 3)).astype(np.float32)
    prompt = rng.integers(0, vocab, int(rng.integers(0, 30))).tolist()
    generated = rng.integers(0, vocab, int(rng.integers(0, 30))).tolist()
    kwargs = dict(temperature=float(rng.uniform(0.3, 1.5)), top_k=int(rng.choice([0, 5, 40])),
                  top_p=float(rng.choice([1.0, 0.9, 0.5])), min_p=float(rng.choice([0.0, 0.05, 0.2])))
    penalties = dict(repetition_penalty=float(rng.choice([1.0, 1.3, 0.8])),
                     presence_penalty=float(rng.choice([0.0, 0.5, -0.3])),
                     frequency_penalty=float(rng.choice([0.0, 0.4])))
    got = logits_to_probs(logits, SamplingParams(**kwargs, **penalties), prompt=prompt, generated=generated)
    want = brute_force_probs(logits, kwargs["temperature"], kwargs["top_k"], kwargs["top_p"], kwargs["min_p"],
                             penalties["repetition_penalty"], penalties["presence_penalty"],
                             penalties["frequency_penalty"], prompt, generated)
    np.testing.assert_array_equal(np.flatnonzero(got), np.flatnonzero(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8)


def test_min_p_keeps_tokens_at_least_min_p_of_the_max():
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=1.0, min_p=0.5))  # 0.4 max: keep p >= 0.2
    np.testing.assert_allclose(probs, [0, 0.4 / 0.9, 0.2 / 0.9, 0.3 / 0.9], rtol=F32)
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=1.0, top_p=0.75, min_p=0.6))  # after top-p: 0.24 cut
    np.testing.assert_allclose(probs, [0, 0.4 / 0.7, 0, 0.3 / 0.7], rtol=F32)


def test_min_p_matches_transformers():
    import torch
    from transformers.generation.logits_process import MinPLogitsWarper, TemperatureLogitsWarper, TopPLogitsWarper

    logits = (np.random.default_rng(8).standard_normal(4096) * 2.5).astype(np.float32)
    scores = TemperatureLogitsWarper(0.8)(None, torch.tensor(logits)[None])
    scores = MinPLogitsWarper(0.05)(None, TopPLogitsWarper(0.95)(None, scores))
    want = torch.softmax(scores, dim=-1)[0].numpy()
    got = logits_to_probs(logits, SamplingParams(temperature=0.8, top_p=0.95, min_p=0.05))
    np.testing.assert_array_equal(np.flatnonzero(got), np.flatnonzero(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_repetition_penalty_matches_transformers_and_greedy_sees_it():
    import torch
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = (np.random.default_rng(9).standard_normal(500) * 2).astype(np.float32)
    history = [3, 3, 10, int(np.argmax(logits)), 499]
    want = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([history]), torch.tensor(logits)[None])[0].numpy()
    sampler = Sampler(SamplingParams(repetition_penalty=1.7), prompt=history[:3])
    for t in history[3:]:
        sampler.record(t)
    np.testing.assert_array_equal(sampler.penalize(logits), want)
    assert sampler(logits) == int(np.argmax(want))


def test_presence_and_frequency_count_generated_tokens_only():
    sampler = Sampler(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), prompt=[0, 1])
    logits = np.zeros(4, np.float32)
    np.testing.assert_array_equal(sampler.penalize(logits), logits)  # the prompt does not count
    for t in (2, 2, 3):
        sampler.record(t)
    np.testing.assert_array_equal(sampler.penalize(logits), [0, 0, -1.0, -0.75])
    sampler = Sampler(SamplingParams(frequency_penalty=10.0, seed=0))
    first = sampler(np.array([1.0, 0.9], np.float32))
    assert first == 0 and sampler(np.array([1.0, 0.9], np.float32)) == 1  # the drawn token counts itself


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_p": -0.1}, r"min_p must be in \[0, 1\]"),
        ({"min_p": 1.5}, r"min_p must be in \[0, 1\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty must be a finite number > 0"),
        ({"presence_penalty": float("nan")}, "presence_penalty must be a finite number"),
        ({"frequency_penalty": "1"}, "frequency_penalty must be a finite number"),
    ],
)
def test_bad_new_sampling_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        SamplingParams(**kwargs)


def test_device_params_row_layout():
    from ember.runtime.sampler import DEVICE_PARAM_FIELDS, device_params

    row = device_params(SamplingParams(temperature=0.5, top_k=7, top_p=0.9, min_p=0.1, repetition_penalty=1.2,
                                       presence_penalty=0.3, frequency_penalty=0.4), seed=(5 << 32) | 9, slot=3, step=2)
    ints = row.view(np.int32)
    f = {n: i for i, n in enumerate(DEVICE_PARAM_FIELDS)}
    assert row[f["temperature"]] == np.float32(0.5) and row[f["top_p"]] == np.float32(0.9)
    assert row[f["repetition_penalty"]] == np.float32(1.2) and row[f["frequency_penalty"]] == np.float32(0.4)
    assert [ints[f[k]] for k in ("top_k", "seed_lo", "seed_hi", "step", "slot", "flags")] == [7, 9, 5, 2, 3, 1]
