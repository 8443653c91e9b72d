"""Which sequences run in the next engine step, and the KV pages they may use (no model calls here).

Pages are counted here rather than asked of TVM (`pages.PageTable` mirrors TVM's page chains): a sequence admitted
to prefill reserves the pages of all its remaining tokens first, so a prefill never runs out. A step is a decode of
every sequence that has one token left to feed, plus prefill chunks (of sequences being prefilled, then of newly
admitted ones, first come first served) filling what is left of the token budget. With the prefix cache on, an
admitted sequence first forks the cached sequence sharing the longest prefix with its prompt and prefills only the
rest; cached sequences are evicted (least recently used first) before anything waits for pages. When a decode
needs a page and none is free, the newest running sequence is preempted: its pages are freed and it goes back to
the front of the queue, to be prefilled again later with the tokens it had generated.

`schedule` returns the KV operations to run before the step's forwards, in order: ("remove", seq_id),
("add", seq_id) and ("fork", parent, child, position).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .pages import PageTable, pages_for
from .prefix_cache import PrefixCache
from .sequence import RUNNING, WAITING, Sequence

__all__ = ["Scheduler", "StepPlan", "pages_for"]


@dataclass
class StepPlan:
    decode: list[Sequence] = field(default_factory=list)
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens fed this step)
    preempted: list[Sequence] = field(default_factory=list)
    ops: list[tuple] = field(default_factory=list)  # KV cache operations, in order, before the forwards

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)


class Scheduler:
    def __init__(self, *, max_seqs: int, total_pages: int, page_size: int, token_budget: int,
                 prefill_chunk: int, prefix_cache: PrefixCache | None = None) -> None:
        self.max_seqs = max_seqs
        self.total_pages = total_pages
        self.page_size = page_size
        self.token_budget = token_budget
        self.prefill_chunk = prefill_chunk
        self.cache = prefix_cache
        self.table = PageTable(total_pages, page_size)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is preempted first
        self.target: dict[int, int] = {}  # seq_id -> own pages it may grow to (reserved ahead of use)
        self.preemptions = 0
        self.snapshot = (0, 0)  # (pages used by running sequences, pages only cached ones hold): for other threads

    # -- page facts -----------------------------------------------------------------------------------------
    @property
    def reserved(self) -> int:
        return sum(max(0, t - self.table.own_pages(s)) for s, t in self.target.items())

    @property
    def free_pages(self) -> int:
        return self.table.free - self.reserved

    @property
    def used_pages(self) -> int:
        """Pages running sequences hold or reserved (cached ones not counted): zero when nothing runs."""
        return self.snapshot[0]

    @property
    def cached_pages(self) -> int:
        return self.snapshot[1]

    def update_snapshot(self) -> None:
        running = [s.seq_id for s in self.running if s.seq_id in self.table]
        self.snapshot = (self.table.pages_of(running) + self.reserved, self.table.used - self.table.pages_of(running))

    # -- queue ----------------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.state = WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence, keep: bool = False) -> list[int]:
        """A finished or aborted sequence leaves; with keep (it finished and the prefix cache is on) it stays in
        the cache as a holder. Returns the sequence ids to remove from the KV cache now."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.target.pop(seq.seq_id, None)
        if seq.seq_id not in self.table:
            return []
        drop: list[int] = []
        if keep and self.cache is not None and self.table.length(seq.seq_id) > 0:
            drop += self.cache.insert(seq.seq_id, seq.tokens[: self.table.length(seq.seq_id)], holder=True)
            holders = self.cache.lru_holders()
            drop += holders[: max(0, len(holders) - self.cache.max_holders)]
        else:
            drop.append(seq.seq_id)
        for s in dict.fromkeys(drop):
            self._drop(s)
        self.update_snapshot()
        return list(dict.fromkeys(drop))

    def clear(self) -> list[int]:
        """The KV cache was cleared: nothing holds pages; running sequences recompute from scratch (returns their
        ids, to add to the cleared cache)."""
        self.table.clear()
        if self.cache is not None:
            self.cache.clear()
        for seq in self.running:
            seq.computed = 0
            self.table.add(seq.seq_id)
            self.target[seq.seq_id] = pages_for(len(seq.tokens) + 1, self.page_size)
        self.update_snapshot()
        return [seq.seq_id for seq in self.running]

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- a step ---------------------------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        plan = StepPlan()
        self._plan_decodes(plan)
        budget = self.token_budget - len(plan.decode)
        for seq in self.running:  # sequences part way through their prefill
            if budget <= 0:
                break
            if seq.remaining > 1 or seq.computed == 0:
                n = min(seq.remaining, budget, self.prefill_chunk)
                plan.prefill.append((seq, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            if self._leader_busy(seq):
                break  # its prompt is being computed by the request it follows: fork that once it is done
            match = self._match(seq)
            if not self._admit(seq, match, plan):
                break  # first come first served: the head waits for pages, and so do those behind it
            self.waiting.popleft()
            seq.state = RUNNING
            self.running.append(seq)
            n = min(seq.remaining, budget, self.prefill_chunk)
            plan.prefill.append((seq, n))
            budget -= n
        self.update_snapshot()
        return plan

    def _leader_busy(self, seq: Sequence) -> bool:
        leader = seq.leader
        return (self.cache is not None and leader is not None and leader.finish_reason is None
                and leader.computed < leader.prompt_len)

    def _match(self, seq: Sequence) -> tuple[int, int] | None:
        if self.cache is None or len(seq.tokens) < 2:
            return None
        hit = self.cache.match(seq.tokens[: len(seq.tokens) - 1])  # at least one token left to compute
        if hit is None:
            return None
        source, length = hit
        if not self.cache.entries[source].holder:  # a running source grows: fork strictly inside it
            length = min(length, self.table.length(source) - 1)
        return (source, length) if length > 0 else None

    def _admit(self, seq: Sequence, match: tuple[int, int] | None, plan: StepPlan) -> bool:
        final = len(seq.tokens) + 1  # its tokens and the first one it samples
        if match is None:
            own = pages_for(final, self.page_size)
        else:  # a fork's own block starts at the page its position cuts (that page copied) or at the position
            source, pos = match
            own = pages_for(final - self.table.own_start_after_fork(source, pos), self.page_size)
        if not self._make_room(own, plan, keep=match[0] if match else None):
            return False
        if match is None:
            self.table.add(seq.seq_id)
            plan.ops.append(("add", seq.seq_id))
        else:
            self.table.fork(source, seq.seq_id, pos)
            plan.ops.append(("fork", source, seq.seq_id, pos))
            seq.computed = pos
            self.cache.hits += 1
            self.cache.hit_tokens += pos
        self.target[seq.seq_id] = own
        return True

    def _make_room(self, pages: int, plan: StepPlan, keep: int | None = None) -> bool:
        """Evict cached holders (least recently used first, never `keep`) until `pages` are free."""
        if pages <= self.free_pages:
            return True
        if self.cache is None:
            return False
        for holder in self.cache.lru_holders():
            if holder == keep:
                continue
            self._drop(holder)
            plan.ops.append(("remove", holder))
            if pages <= self.free_pages:
                return True
        return pages <= self.free_pages

    def _drop(self, seq_id: int) -> None:
        if self.cache is not None:
            self.cache.remove(seq_id)
        if seq_id in self.table:
            self.table.remove(seq_id)

    def _plan_decodes(self, plan: StepPlan) -> None:
        while True:
            decode = [s for s in self.running if s.remaining == 1 and s.computed > 0]
            grow = [s for s in decode if self.table.own_pages_at(s.seq_id, s.computed + 1) > self.target[s.seq_id]]
            if self._make_room(len(grow), plan) or not self.running:
                break
            victim = self.running.pop()
            self.target.pop(victim.seq_id)
            self._drop(victim.seq_id)
            plan.ops.append(("remove", victim.seq_id))
            victim.state = WAITING
            victim.computed = 0
            self.waiting.appendleft(victim)
            plan.preempted.append(victim)
            self.preemptions += 1
        for s in grow:
            self.target[s.seq_id] += 1
        plan.decode = decode

    def after_forward(self, seq: Sequence) -> None:
        """The sequence's cache now holds `computed` tokens: its pages grow; a prompt just computed becomes a
        source others may fork (n > 1 choices, concurrent requests with the same prefix)."""
        if seq.seq_id not in self.table:
            return
        before = self.table.length(seq.seq_id)
        self.table.extend(seq.seq_id, seq.computed)
        if self.cache is not None and before < seq.prompt_len <= seq.computed and seq.prompt_len > 1:
            self.cache.insert(seq.seq_id, seq.tokens[: seq.prompt_len - 1], holder=False)
