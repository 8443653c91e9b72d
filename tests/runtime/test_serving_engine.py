"""The continuous-batching engine (runtime/serving) on the tiny cpu artifact: batched equals alone, preemption
under a small KV cache, stop strings, aborts and the scheduler's page accounting."""
from __future__ import annotations

import asyncio

import pytest

from ember.errors import InputError
from ember.runtime.engine import Engine
from ember.runtime.serving.async_engine import AsyncEngine, QueueFull
from ember.runtime.serving.scheduler import Scheduler, pages_for
from ember.runtime.serving.sequence import Request, Sequence


def run(coro):
    return asyncio.run(coro)


async def gather_outputs(engine: AsyncEngine, prompts, **kwargs):
    return await asyncio.gather(*(engine.complete(p, **kwargs) for p in prompts))


@pytest.fixture(scope="module")
def alone(tiny):
    return Engine.load(tiny.path)


def test_sixteen_batched_equal_each_alone(tiny, alone, prompt_ids):
    prompts = [prompt_ids(3 + 2 * i, seed=100 + i) for i in range(16)]
    want = [alone.generate(p, max_tokens=24) for p in prompts]
    with AsyncEngine.load(tiny.path, max_seqs=16, prefill_chunk_size=40) as engine:
        got = run(gather_outputs(engine, prompts, max_tokens=24))
        assert engine.stats()["kv_pages_used"] == 0 and engine.stats()["running"] == 0
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        assert g.finish_reason == w.finish_reason
        assert g.prompt_tokens == w.prompt_tokens and g.completion_tokens == len(w.token_ids)


def test_small_cache_preempts_and_recomputes_without_changing_answers(tiny, alone, prompt_ids):
    prompts = [prompt_ids(20, seed=200 + i) for i in range(8)]
    want = [alone.generate(p, max_tokens=40).token_ids for p in prompts]
    # 8 sequences of up to 60 tokens need 32 pages; the cache has 8 (two full contexts)
    with AsyncEngine.load(tiny.path, max_seqs=8, kv_tokens=128) as engine:
        got = run(gather_outputs(engine, prompts, max_tokens=40))
        stats = engine.stats()
    assert [g.token_ids for g in got] == want
    assert stats["preempted"] > 0 and stats["kv_pages_used"] == 0 and stats["kv_pages_total"] == 8


def test_seeded_sampling_is_reproducible_batched_or_not(tiny, prompt_ids):
    prompt = prompt_ids(7, seed=3)
    options = dict(max_tokens=20, temperature=1.0, top_p=0.9, seed=11)
    with AsyncEngine.load(tiny.path, max_seqs=4) as engine:
        one = run(engine.complete(prompt, **options)).token_ids
        others = [prompt_ids(9, seed=s) for s in range(3)]
        many = run(gather_outputs(engine, [prompt] + others, **options))
        other_seed = run(engine.complete(prompt, **{**options, "seed": 12})).token_ids
    assert many[0].token_ids == one
    assert other_seed != one


def test_stop_strings_cut_the_text_and_stream_nothing_past_them(tiny, alone):
    free = alone.generate("hello ember", max_tokens=30)
    stop = free.text[8:11]
    assert len(stop) == 3
    cut = free.text.index(stop)

    async def stream(engine):
        return [out async for out in engine.generate("hello ember", max_tokens=30, stop=[stop])]

    with AsyncEngine.load(tiny.path, max_seqs=2) as engine:
        outs = run(stream(engine))
    text = "".join(o.text for o in outs)
    assert text == free.text[:cut]
    assert outs[-1].finish_reason == "stop"


def test_abort_frees_the_sequence(tiny, prompt_ids):
    async def main(engine):
        agen = engine.generate(prompt_ids(5), max_tokens=50)
        async for _ in agen:
            break
        await agen.aclose()
        for _ in range(200):
            if engine.stats()["running"] == 0:
                break
            await asyncio.sleep(0.01)
        return engine.stats()

    with AsyncEngine.load(tiny.path, max_seqs=2) as engine:
        stats = run(main(engine))
        assert stats["running"] == 0 and stats["kv_pages_used"] == 0
        assert run(engine.complete(prompt_ids(5), max_tokens=3)).completion_tokens == 3  # still serving


def test_bad_requests_are_refused_before_queueing(tiny, prompt_ids):
    with AsyncEngine.load(tiny.path, max_seqs=2, max_queue=0) as engine:
        with pytest.raises(InputError, match="70 tokens.*context length of tiny-llama is 64"):
            run(engine.complete(prompt_ids(70), max_tokens=1))
        with pytest.raises(InputError, match="max_tokens"):
            run(engine.complete(prompt_ids(4), max_tokens=0))
        with pytest.raises(QueueFull):
            run(engine.complete(prompt_ids(4), max_tokens=2))


def test_scheduler_admits_under_pages_and_budget():
    sink = []
    seqs = [Sequence(i, Request(str(i), list(range(1, 31)), 10), None, [], 64, sink.append) for i in range(3)]
    sched = Scheduler(max_seqs=3, total_pages=5, page_size=16, token_budget=40, prefill_chunk=32)
    for s in seqs:
        sched.add(s)
    plan = sched.schedule()
    # the first needs pages_for(31) = 2 pages and gets 30 tokens; the second is admitted (2 more pages) with the
    # 10 tokens left of the budget; the third waits: 1 page free
    assert [(s.seq_id, n) for s, n in plan.prefill] == [(0, 30), (1, 10)]
    assert sched.used_pages == 4 and list(sched.waiting) == [seqs[2]]
    assert pages_for(32, 16) == 2 and pages_for(33, 16) == 3


def test_kv_cache_sized_from_free_memory(tiny):
    from ember.runtime.artifact import read_manifest
    from ember.runtime.serving.memory import kv_bytes_per_token, kv_tokens_from_memory

    kv = read_manifest(tiny.path).kv_cache

    class Device:
        available_global_memory = 64 * kv_bytes_per_token(kv) * 10  # 640 tokens' worth

    assert kv_tokens_from_memory(kv, Device(), 0.5, 64, most=10_000) == 320
    assert kv_tokens_from_memory(kv, Device(), 1.0, 64, most=128) == 128
    with pytest.raises(InputError, match="fewer than one sequence of 64 tokens"):
        kv_tokens_from_memory(kv, Device(), 0.05, 64, most=10_000)
    with pytest.raises(InputError, match="gpu_memory_utilization"):
        kv_tokens_from_memory(kv, Device(), 1.5, 64, most=10_000)
    with AsyncEngine.load(tiny.path, max_seqs=3, memory_utilization=0.5) as engine:  # host memory: capped
        assert engine.stats()["kv_pages_total"] == 2 * 3 * 64 // 16  # 3 running + 3 cached full contexts
        assert run(engine.complete("hello", max_tokens=3)).completion_tokens == 3


def test_ember_load_async_embeds_the_engine_without_http(tiny, alone):
    """README's embedding: `ember.load_async` streams outputs to an app's own event loop; concurrent streams are
    batched and each equals its request run alone; a seeded sampled stream repeats."""
    import ember

    prompts = ["Once upon a time", "hello ember", "the quick"]
    want = [alone.generate(p, max_tokens=12) for p in prompts]

    async def stream(engine, prompt, **kwargs):
        text, outs = "", []
        async for out in engine.generate(prompt, max_tokens=12, **kwargs):
            text += out.text
            outs.append(out)
        return text, outs[-1]

    async def app(engine):
        together = await asyncio.gather(*(stream(engine, p) for p in prompts))
        seeded = [await stream(engine, prompts[0], temperature=0.7, seed=1) for _ in range(2)]
        return together, seeded

    engine = ember.load_async(tiny.path, max_seqs=4)
    try:
        assert engine.name == "tiny-llama"
        together, seeded = asyncio.run(app(engine))
        assert engine.stats()["kv_pages_used"] == 0 and engine.stats()["running"] == 0
    finally:
        engine.shutdown()
    for (text, last), w in zip(together, want):
        assert text == w.text and last.finish_reason == w.finish_reason
        assert last.completion_tokens == len(w.token_ids) and last.prompt_tokens == w.prompt_tokens
    assert seeded[0][0] == seeded[1][0] == alone.generate(prompts[0], max_tokens=12, temperature=0.7, seed=1).text


def test_a_stream_that_ends_at_eos_inside_a_character_keeps_its_last_bytes(tiny, alone):
    """This prompt's greedy answer ends at EOS after a token holding part of a UTF-8 character: the streamed text
    ends with the replacement character, as the whole answer decoded at once does (it was dropped)."""
    want = alone.generate([0, 159, 160], max_tokens=30)
    assert want.finish_reason == "stop" and want.text.endswith("\ufffd")
    with AsyncEngine.load(tiny.path, max_seqs=2) as engine:
        got = run(engine.complete([0, 159, 160], max_tokens=30))
    assert got.text == want.text and got.finish_reason == "stop"
