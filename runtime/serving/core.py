"""The engine loop: one thread owns the model runner and its KV cache, and runs scheduler steps while there is
work. Other threads talk to it only through `submit` and `abort` (a queue); outputs leave through each request's
sink. A failing step fails the requests in it (with the error) and clears the cache; the loop keeps serving."""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence as Seq
from dataclasses import dataclass, field


from ...errors import InputError
from ..model_runner import ModelRunner
from ..tokenizer import Tokenizer
from .pages import pages_for
from .prefix_cache import PrefixCache
from .device_sampling import DeviceSampling
from .sampling import HostSampling
from .scheduler import Scheduler
from .sequence import FINISHED, Output, Request, Sequence, TokenLogprob

log = logging.getLogger("ember.serve")


WINDOW_S = 10  # the tokens/s gauge's window


@dataclass
class StepStats:
    """Running totals the metrics read (written by the loop thread only)."""
    steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    finished: int = 0
    preempted: int = 0
    # [whole second, tokens sampled in it] of the last seconds that sampled any: the tokens/s gauge
    recent: deque[list[int]] = field(default_factory=lambda: deque(maxlen=WINDOW_S + 2))

    def count(self, tokens: int) -> None:
        if not tokens:
            return
        self.generated_tokens += tokens
        second = int(time.monotonic())
        if self.recent and self.recent[-1][0] == second:
            self.recent[-1][1] += tokens
        else:
            self.recent.append([second, tokens])

    def tokens_per_s(self) -> float:
        """Tokens generated per second over the last WINDOW_S whole seconds and this one's part (0 when idle).
        Any thread may call it."""
        now = time.monotonic()
        start = int(now) - WINDOW_S
        return sum(n for second, n in self.recent.copy() if second >= start) / (now - start)


class EngineCore:
    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer | None, eos_token_ids: Seq[int], *,
                 max_seqs: int, token_budget: int | None = None, cached_seqs: int = 0,
                 device_sampling: bool | None = None) -> None:
        """`cached_seqs` > 0 turns the prefix cache on: up to that many finished sequences stay in the KV cache
        for later requests to fork (the runner must hold max_seqs + cached_seqs sequences). `device_sampling`:
        sample on the device (None: where the artifact has a device sampler, cuda builds), False: on the host."""
        page = runner.kv.page_size
        total = runner.kv.max_total_seq_len // page
        if total < pages_for(runner.context_length, page):
            raise InputError(f"the KV cache holds {total} pages of {page} tokens, fewer than one sequence of the "
                             f"context length {runner.context_length} needs")
        if max_seqs + cached_seqs > runner.max_batch_size:
            raise InputError(f"max_seqs {max_seqs} and {cached_seqs} cached sequences exceed the runner's "
                             f"max_batch_size {runner.max_batch_size}")
        if cached_seqs and runner.kv.evicts:
            cached_seqs = 0  # TVM cannot fork a sequence under its own sliding window
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos = list(eos_token_ids)
        budget = token_budget or max(runner.prefill_chunk_size, max_seqs + 1)
        self.prefix_cache = PrefixCache(cached_seqs) if cached_seqs else None
        self.scheduler = Scheduler(max_seqs=max_seqs, total_pages=total, page_size=page, token_budget=budget,
                                   prefill_chunk=runner.prefill_chunk_size, prefix_cache=self.prefix_cache)
        if device_sampling and not runner.has_device_sampler:
            raise InputError(f"{runner.name} has no device sampler (cuda builds have one): sample on the host")
        if device_sampling is None:
            device_sampling = runner.has_device_sampler
        self.sampling = DeviceSampling(runner) if device_sampling else HostSampling(runner)
        self.stats = StepStats()
        self.on_finish: Callable[[Sequence], None] | None = None  # metrics hook
        # called by the loop thread after each pass (inbox, step): the outputs of the pass can leave together
        self.on_pass: Callable[[], None] | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._ids = itertools.count()
        self._by_request: dict[str, Sequence] = {}
        self._thread: threading.Thread | None = None
        self._stop = False

    # -- any thread ---------------------------------------------------------------------------------------
    def submit(self, request: Request, sink: Callable[[Output], None]) -> None:
        self._inbox.put(("add", request, sink))

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id, None))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ember-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the loop; requests still in flight end with finish_reason "abort"."""
        self._stop = True
        self._inbox.put(("wake", None, None))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queue_depth(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def running(self) -> int:
        return len(self.scheduler.running)

    @property
    def pages_used(self) -> int:
        return self.scheduler.used_pages

    # -- the loop thread ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop:
            try:
                self._drain(block=not self.scheduler.has_work())
                if self._stop:
                    break
                if self.scheduler.has_work():
                    self.step()
            except Exception:  # the loop must outlive any one request
                log.exception("engine loop error")
            self._end_pass()
        for seq in list(self._by_request.values()):
            self._retire(seq, "abort")
        self._end_pass()

    def _end_pass(self) -> None:
        if self.on_pass is not None:
            try:
                self.on_pass()
            except Exception:
                log.exception("delivering outputs failed")

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, arg, sink = item
            if kind == "add":
                self._add(arg, sink)
            elif kind == "abort" and arg in self._by_request:
                self._retire(self._by_request[arg], "abort")
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _add(self, request: Request, sink: Callable[[Output], None]) -> None:
        seq = Sequence(next(self._ids), request, self.tokenizer, self.eos, self.runner.context_length, sink)
        if request.request_id in self._by_request:
            seq.abort("error", f"request id {request.request_id} is already in flight")
            sink(seq.final)
            return
        if request.follows is not None:
            seq.leader = self._by_request.get(request.follows)
        seq.device = self.sampling.on_device(seq)
        self._by_request[request.request_id] = seq
        self.scheduler.add(seq)

    def step(self) -> None:
        """One scheduler step: its KV operations (evictions, preemptions, forks), then a prefill forward and a
        decode forward, then retirements."""
        plan = self.scheduler.schedule()
        self.stats.preempted += len(plan.preempted)
        for seq in plan.preempted:
            self.sampling.release(seq)
        try:
            self._run_ops(plan.ops)
        except Exception:
            log.exception("a KV cache operation failed; clearing the KV cache")
            self._clear()
            return
        if not plan:
            return
        in_step = [s for s, _ in plan.prefill] + plan.decode
        try:
            for seq, _ in plan.prefill:
                self.sampling.admit(seq)  # newly admitted ones take a penalty slot (device sampling)
            sampled: list[tuple[Sequence, tuple[int, TokenLogprob | None]]] = []
            if plan.prefill:
                chunks = [seq.tokens[seq.computed : seq.computed + n] for seq, n in plan.prefill]
                logits = self.runner.prefill([s.seq_id for s, _ in plan.prefill], chunks)
                done = []
                for i, (seq, n) in enumerate(plan.prefill):
                    seq.computed += n
                    self.stats.prompt_tokens += n
                    self.scheduler.after_forward(seq)
                    if seq.remaining == 0:
                        done.append(i)
                if done:
                    first = [plan.prefill[i][0] for i in done]
                    sampled += zip(first, self.sampling.first(first, logits[done]))
            if plan.decode:
                results = self.sampling.decode(plan.decode)
                for seq in plan.decode:
                    seq.computed += 1
                    self.scheduler.after_forward(seq)
                sampled += zip(plan.decode, results)
            for seq, (token, logprob) in sampled:
                seq.add_token(token, logprob)
                if seq.request.constraint is not None and seq.request.constraint.done:
                    seq.grammar_done()
                if seq.state == FINISHED:
                    self._retire(seq, None)
            self.stats.count(len(sampled))
        except Exception as err:  # a model call failed: fail this step's requests, keep serving the rest
            log.exception("engine step failed")
            for seq in in_step:
                self._retire(seq, "error", f"engine step failed: {type(err).__name__}: {err}")
        self.scheduler.update_snapshot()
        self.stats.steps += 1

    def _run_ops(self, ops: list[tuple]) -> None:
        kv = self.runner.kv
        for op in ops:
            if op[0] == "remove":
                if op[1] in kv.lengths:
                    self.runner.remove_sequence(op[1])
            elif op[0] == "add":
                self.runner.add_sequence(op[1])
            else:
                _, parent, child, pos = op
                kv.fork_sequence(parent, child, pos)

    def _clear(self) -> None:
        self.runner.reset()
        for seq_id in self.scheduler.clear():
            self.runner.add_sequence(seq_id)
        try:
            self.sampling.invalidate(self.scheduler.running)
        except Exception:
            log.exception("rebuilding the device penalty table failed")

    def _retire(self, seq: Sequence, reason: str | None, error: str | None = None) -> None:
        """Free the sequence's pages at once (or keep them in the prefix cache, if it finished by itself: reason
        None) and end its stream."""
        if reason is not None:
            seq.abort(reason, error)
        self.sampling.release(seq)
        try:
            self._run_ops([("remove", s) for s in self.scheduler.remove(seq, keep=reason is None)])
        except Exception:
            log.exception("removing sequence %d failed; clearing the KV cache", seq.seq_id)
            self._clear()
        self._by_request.pop(seq.request.request_id, None)
        self.stats.finished += 1
        if seq.final is not None:
            seq.sink(seq.final)
        if self.on_finish is not None:
            self.on_finish(seq)
