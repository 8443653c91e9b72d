"""The prefix cache (runtime/serving/prefix_cache.py, pages.py) on the tiny cpu artifact: forked prompts give the
same tokens as computing them, pages are shared and come back, holders are evicted when pages run short."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ember.runtime.engine import Engine
from ember.runtime.serving.async_engine import AsyncEngine
from ember.runtime.serving.pages import PageTable
from ember.runtime.serving.prefix_cache import PrefixCache


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def alone(tiny):
    return Engine.load(tiny.path)


def shared_prompts(prompt_ids, count: int, prefix_len: int, seed: int) -> list[list[int]]:
    prefix = prompt_ids(prefix_len, seed=seed)
    rng = np.random.default_rng(seed)
    return [prefix + rng.integers(3, 320, size=int(rng.integers(1, 6))).tolist() for _ in range(count)]


def test_requests_sharing_a_prefix_fork_it_and_answer_the_same(tiny, alone, prompt_ids):
    prompts = shared_prompts(prompt_ids, 10, 21, seed=1) + [prompt_ids(9, seed=2)]
    want = [alone.generate(p, max_tokens=12).token_ids for p in prompts]

    async def one_by_one(engine):
        return [(await engine.complete(p, max_tokens=12)).token_ids for p in prompts]

    with AsyncEngine.load(tiny.path, max_seqs=4) as engine:
        got = run(one_by_one(engine))
        stats = engine.stats()
        again = run(engine.complete(prompts[-1], max_tokens=12)).token_ids  # the whole prompt is cached now
        after = engine.stats()
    assert got == want and again == want[-1]
    assert stats["prefix_cache_hits"] >= 9 and stats["prefix_cache_hit_tokens"] >= 9 * 21
    assert after["prefix_cache_hit_tokens"] - stats["prefix_cache_hit_tokens"] == len(prompts[-1]) - 1
    assert stats["kv_pages_used"] == 0 and stats["kv_pages_cached"] > 0 and stats["running"] == 0


def test_concurrent_sharing_under_a_small_cache_evicts_and_stays_exact(tiny, alone, prompt_ids):
    """24 requests over 3 shared prefixes, 6 at a time, in a cache of 10 pages: holders are evicted, running
    sequences preempted, and every answer is the one computed alone."""
    prompts = [p for s in range(3) for p in shared_prompts(prompt_ids, 8, 18 + 5 * s, seed=10 + s)]
    want = [alone.generate(p, max_tokens=20).token_ids for p in prompts]

    async def together(engine):
        return await asyncio.gather(*(engine.complete(p, max_tokens=20) for p in prompts))

    with AsyncEngine.load(tiny.path, max_seqs=6, kv_tokens=160) as engine:
        table, kv = engine.core.scheduler.table, engine.runner.kv
        spare = kv.available_pages() - table.free  # TVM's pages beyond the mirror's total
        got = run(together(engine))
        stats = engine.stats()
        assert table.used == stats["kv_pages_cached"] <= 10
        assert kv.available_pages() - spare == table.free  # the holders' pages, as TVM counts them
    assert [g.token_ids for g in got] == want
    assert stats["prefix_cache_hits"] > 0 and stats["kv_pages_used"] == 0


def test_the_mirror_counts_pages_as_tvm_does(tiny, prompt_ids):
    """Forks at page boundaries, inside pages and at the end, removals in any order: the page table's free
    count moves exactly as TVM's available pages do."""
    engine = AsyncEngine.load(tiny.path, max_seqs=2, prefix_cache=7, kv_tokens=768)
    try:
        engine.core.shutdown()  # drive the runner and the table by hand
        runner, table = engine.runner, PageTable(engine.core.scheduler.total_pages, 16)
        kv = runner.kv
        base = kv.available_pages() - table.free  # TVM keeps a few pages more than the mirror's total

        def same():
            assert kv.available_pages() - base == table.free

        runner.add_sequence(0)
        table.add(0)
        runner.prefill([0], [prompt_ids(40, seed=5)])
        table.extend(0, 40)
        same()
        for child, (parent, pos, grow) in enumerate([(0, 32, 5), (0, 37, 20), (0, 40, 9), (1, 20, 3), (3, 22, 30),
                                                                       (4, 23, 9), (0, 16, 16), (7, 32, 4)],
                                                    start=1):
            kv.fork_sequence(parent, child, pos)
            table.fork(parent, child, pos)
            same()
            runner.prefill([child], [list(range(3, 3 + grow))])
            table.extend(child, pos + grow)
            same()
        for seq in (0, 3, 1, 7, 5, 2, 6, 8, 4):
            runner.remove_sequence(seq)
            table.remove(seq)
            same()
        assert table.used == 0
    finally:
        engine.shutdown()


def test_radix_tree_matches_the_longest_prefix_and_forgets_removed_entries():
    cache = PrefixCache(max_holders=4)
    assert cache.insert(1, [5, 6, 7, 8], holder=True) == []
    assert cache.insert(2, [5, 6, 7, 8, 9, 10], holder=True) == [1]  # 1 is a prefix of 2: redundant
    cache.remove(1)
    assert cache.match([5, 6, 7, 8, 9, 11]) == (2, 5)
    cache.insert(3, [5, 6, 1], holder=False)
    assert cache.match([5, 6, 1, 1]) == (3, 3)
    assert cache.match([5, 6, 2]) in ((2, 2), (3, 2))
    assert cache.match([4]) is None
    assert cache.lru_holders() == [2]
    cache.remove(2)
    assert cache.match([5, 6, 7]) == (3, 2)
    cache.remove(3)
    assert cache.match([5]) is None and not cache.root.children
