"""Sampler and chunk planning: pure functions checked against hand-worked numbers."""
from __future__ import annotations

import numpy as np
import pytest

from ember.errors import InputError
from ember.runtime.kv_cache import plan_chunks
from ember.runtime.sampler import SamplingParams, logits_to_probs, sample, top_k_mask, top_p_mask

LOGITS = np.log(np.array([0.1, 0.4, 0.2, 0.3]))  # softmax gives back these probabilities


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
    np.testing.assert_allclose(probs, [0, 0.4 / 0.7, 0, 0.3 / 0.7])


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
    np.testing.assert_allclose(full, np.where(out > 0, probs, 0) / probs[kept].sum())


def test_temperature_scales_logits():
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=2.0))
    want = np.sqrt([0.1, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(probs, want / want.sum())


def test_top_k_then_top_p():
    # top-k 3 keeps (0.4, 0.3, 0.2) renormalised to (4/9, 3/9, 2/9); top-p 0.5 then keeps 4/9 and 3/9
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=1.0, top_k=3, top_p=0.5))
    np.testing.assert_allclose(probs, [0, 4 / 7, 0, 3 / 7])


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
