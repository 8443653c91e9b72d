"""The runtime against Hugging Face on a real compiled artifact: logits, greedy generation, batching, chunking."""
from __future__ import annotations

import re

import numpy as np
import pytest

from ember.errors import InputError
from ember.runtime.engine import Engine
from ember.runtime.generate import generate
from ember.runtime.sampler import SamplingParams
from nn_fixture import CONTEXT_LENGTH, hf_greedy, hf_logits

ATOL = 1e-4


def test_score_matches_hf_logits(engine, tiny, prompt_ids):
    ids = prompt_ids(40)  # spans 3 pages of 16
    got = engine.score(ids)
    want = hf_logits(tiny.hf_model, ids)
    assert got.dtype == np.float32 and got.shape == (40, engine.manifest.vocab_size)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert np.abs(want).max() > 1.0  # the comparison is not between two near-zero arrays


def test_score_in_chunks_matches_hf(tiny, prompt_ids, monkeypatch):
    import ember.runtime.model_runner as model_runner

    small = Engine.load(tiny.path, prefill_chunk_size=16)
    ids = prompt_ids(45, seed=3)
    np.testing.assert_allclose(small.score(ids), hf_logits(tiny.hf_model, ids), atol=ATOL, rtol=0)
    # and chunks cut by the logits-memory cap instead of prefill_chunk_size
    monkeypatch.setattr(model_runner, "MAX_LOGITS_ELEMENTS", 7 * small.manifest.vocab_size)
    np.testing.assert_allclose(small.score(ids), hf_logits(tiny.hf_model, ids), atol=ATOL, rtol=0)


def test_greedy_generate_matches_hf(engine, tiny, prompt_ids):
    ids = prompt_ids(9, seed=1)
    want = hf_greedy(tiny.hf_model, ids, 16)
    result = engine.generate(ids, max_tokens=16)
    assert result.token_ids == want
    assert result.finish_reason == ("length" if len(want) == 16 else "stop")
    assert result.prompt_tokens == 9
    assert result.ttft_s > 0 and result.prefill_tokens_per_s > 0 and result.decode_tokens_per_s > 0
    assert len(result.timestamps_s) >= len(result.token_ids)
    assert "random weights" not in result.summary()


def test_generation_stops_at_eos(engine, tiny, prompt_ids):
    ids = prompt_ids(9, seed=1)
    free = engine.generate(ids, max_tokens=16).token_ids
    stop = free[5]
    k = free.index(stop)
    result = generate(engine.runner, ids, max_tokens=16, sampling=SamplingParams(), eos_token_ids=[stop])
    assert result.token_ids == free[:k]
    assert result.finish_reason == "stop"


def test_text_prompt_streams_the_same_text(engine, tiny):
    pieces: list[str] = []
    result = engine.generate("hello ember, café", max_tokens=12, stream=pieces.append)
    assert "".join(pieces) == result.text
    assert result.text == engine.tokenizer.decode(result.token_ids)
    ids = engine.tokenizer.encode("hello ember, café")
    assert ids[0] == engine.tokenizer.bos_token_id and result.prompt_tokens == len(ids)
    assert result.token_ids == hf_greedy(tiny.hf_model, ids, 12)


def test_ragged_batched_prefill_and_decode_equal_each_alone(engine, prompt_ids):
    runner = engine.runner
    a, b = prompt_ids(23, seed=4), prompt_ids(9, seed=5)

    def alone(ids: list[int], nxt: int) -> tuple[np.ndarray, np.ndarray]:
        runner.reset()
        runner.add_sequence(7)
        first = runner.prefill([7], [ids])[0]
        second = runner.decode([7], [nxt])[0]
        runner.reset()
        return first, second

    runner.reset()
    runner.add_sequence(3)
    runner.add_sequence(1)
    batch = runner.prefill([3, 1], [a, b])  # seq ids out of order on purpose
    step = runner.decode([3, 1], [11, 12])
    assert runner.kv.sequence_length(3) == 24 and runner.kv.sequence_length(1) == 10
    runner.reset()
    for row, (ids, nxt) in enumerate([(a, 11), (b, 12)]):
        first, second = alone(ids, nxt)
        np.testing.assert_allclose(batch[row], first, atol=1e-5, rtol=0)
        np.testing.assert_allclose(step[row], second, atol=1e-5, rtol=0)


def test_ragged_prefill_all_logits_in_small_chunks(tiny, prompt_ids):
    small = Engine.load(tiny.path, max_batch_size=2, prefill_chunk_size=8)
    a, b = prompt_ids(19, seed=6), prompt_ids(6, seed=7)
    runner = small.runner
    runner.add_sequence(0)
    runner.add_sequence(1)
    got = runner.prefill([0, 1], [a, b], all_logits=True)
    runner.reset()
    np.testing.assert_allclose(got[:19], hf_logits(tiny.hf_model, a), atol=ATOL, rtol=0)
    np.testing.assert_allclose(got[19:], hf_logits(tiny.hf_model, b), atol=ATOL, rtol=0)


def test_forked_sequence_continues_like_the_parent(engine, tiny, prompt_ids):
    runner = engine.runner
    ids = prompt_ids(12, seed=8)
    runner.reset()
    runner.add_sequence(0)
    runner.prefill([0], [ids])
    runner.kv.fork_sequence(0, 1)
    got = runner.decode([0, 1], [5, 6])
    runner.reset()
    np.testing.assert_allclose(got[0], hf_logits(tiny.hf_model, ids + [5])[-1], atol=ATOL, rtol=0)
    np.testing.assert_allclose(got[1], hf_logits(tiny.hf_model, ids + [6])[-1], atol=ATOL, rtol=0)


def test_pages_come_back_after_generation(engine, prompt_ids):
    engine.runner.reset()
    free = engine.runner.kv.available_pages()
    engine.generate(prompt_ids(30), max_tokens=20)
    assert engine.runner.kv.available_pages() == free
    assert engine.runner.kv.lengths == {}


def test_sampled_generation_is_reproducible(engine, prompt_ids):
    ids = prompt_ids(5)
    kw = dict(max_tokens=10, temperature=1.5, top_k=50, top_p=0.95)
    one = engine.generate(ids, seed=123, **kw).token_ids
    assert engine.generate(ids, seed=123, **kw).token_ids == one
    assert any(engine.generate(ids, seed=s, **kw).token_ids != one for s in range(124, 130))


def test_out_of_range_token_is_refused_before_the_model_runs(engine):
    with pytest.raises(InputError, match=r"^prompt token id 999 at position 2 is outside the vocabulary \[0, 320\)$"):
        engine.generate([0, 5, 999, 4], max_tokens=2)
    with pytest.raises(InputError, match="id -1 at position 0"):
        engine.score([-1, 3])
    engine.runner.add_sequence(0)
    try:
        with pytest.raises(InputError, match="id 320 at position 1"):
            engine.runner.prefill([0], [[1, 320]])
        with pytest.raises(InputError, match="id 400 at position 0"):
            engine.runner.decode([0], [400])
        assert engine.runner.kv.sequence_length(0) == 0  # nothing reached the cache
    finally:
        engine.runner.reset()


def test_prompt_longer_than_the_context_is_refused(engine, prompt_ids):
    msg = f"prompt of 60 tokens + 10 new tokens exceeds the context length {CONTEXT_LENGTH} of tiny-llama"
    with pytest.raises(InputError, match=f"^{re.escape(msg)}$"):
        engine.generate(prompt_ids(60), max_tokens=10)
    with pytest.raises(InputError, match="65 tokens exceed the context length 64"):
        engine.score(prompt_ids(65))
    assert engine.generate(prompt_ids(60), max_tokens=4).token_ids  # exactly fits


def test_a_smaller_context_length_is_enforced(tiny, prompt_ids):
    short = Engine.load(tiny.path, context_length=20)
    with pytest.raises(InputError, match="exceeds the context length 20 of tiny-llama"):
        short.generate(prompt_ids(15), max_tokens=6)
    with pytest.raises(InputError, match=r"^context_length 65 must be in \[1, 64\] for tiny-llama$"):
        Engine.load(tiny.path, context_length=65)


def test_sliding_window_matches_hf_mistral(tiny_sw, prompt_ids):
    sw = Engine.load(tiny_sw.path, prefill_chunk_size=32)
    assert sw.runner.kv.sliding_window == 9
    ids = prompt_ids(40, seed=9)
    want = hf_logits(tiny_sw.hf_model, ids)
    np.testing.assert_allclose(sw.score(ids), want, atol=ATOL, rtol=0)
    # a prompt prefilled in pieces that cross the window, then decoded
    gen = prompt_ids(20, seed=10)
    assert sw.generate(gen, max_tokens=16).token_ids == hf_greedy(tiny_sw.hf_model, gen, 16)
