"""Which sequences run in the next engine step, and the KV pages they may use (no model calls here).

Pages are counted here rather than asked of TVM: a sequence holds ceil(tokens in the cache / page size) pages,
and one admitted to prefill reserves the pages of all its remaining tokens first, so a prefill never runs out.
A step is a decode of every sequence that has one token left to feed, plus prefill chunks (of sequences being
prefilled, then of newly admitted ones, first come first served) filling what is left of the token budget. When
a decode needs a page and none is free, the newest running sequence is preempted: its pages are freed and it
goes back to the front of the queue, to be prefilled again later with the tokens it had generated.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .sequence import RUNNING, WAITING, Sequence


def pages_for(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


@dataclass
class StepPlan:
    decode: list[Sequence] = field(default_factory=list)
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens fed this step)
    preempted: list[Sequence] = field(default_factory=list)  # to remove from the KV cache before the step

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)


class Scheduler:
    def __init__(self, *, max_seqs: int, total_pages: int, page_size: int, token_budget: int,
                 prefill_chunk: int) -> None:
        self.max_seqs = max_seqs
        self.total_pages = total_pages
        self.page_size = page_size
        self.token_budget = token_budget
        self.prefill_chunk = prefill_chunk
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is preempted first
        self.held: dict[int, int] = {}  # seq_id -> pages held (reserved for prefill, or in use)
        self.preemptions = 0

    @property
    def used_pages(self) -> int:
        return sum(list(self.held.values()))  # a snapshot: other threads read it while the loop writes

    @property
    def free_pages(self) -> int:
        return self.total_pages - self.used_pages

    def add(self, seq: Sequence) -> None:
        seq.state = WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """A finished or aborted sequence: its pages are free at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.held.pop(seq.seq_id, None)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

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
            need = pages_for(len(seq.tokens) + 1, self.page_size)  # its tokens and the first one it samples
            if need > self.free_pages:
                break  # first come first served: the head waits for pages, and so do those behind it
            self.waiting.popleft()
            seq.state = RUNNING
            self.running.append(seq)
            self.held[seq.seq_id] = need
            n = min(seq.remaining, budget, self.prefill_chunk)
            plan.prefill.append((seq, n))
            budget -= n
        return plan

    def _plan_decodes(self, plan: StepPlan) -> None:
        while True:
            decode = [s for s in self.running if s.remaining == 1 and s.computed > 0]
            grow = [s for s in decode if pages_for(s.computed + 1, self.page_size) > self.held[s.seq_id]]
            if len(grow) <= self.free_pages or not self.running:
                break
            victim = self.running.pop()
            self.held.pop(victim.seq_id)
            victim.state = WAITING
            self.waiting.appendleft(victim)
            plan.preempted.append(victim)
            self.preemptions += 1
        for s in grow:
            self.held[s.seq_id] += 1
        plan.decode = decode

    def after_step(self, seq: Sequence) -> None:
        """A sequence's cache grew: it holds at least the pages its tokens fill (the reservation otherwise)."""
        if seq.seq_id in self.held:
            self.held[seq.seq_id] = max(self.held[seq.seq_id], pages_for(seq.computed, self.page_size))
