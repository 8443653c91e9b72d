"""A small class over TVM's paged KV cache object and its `vm.builtin.*` functions (guide tvm-kvcache §3).

The cache is created by the artifact's `create_kv`. Every forward is bracketed by begin_forward/end_forward with
the sequence ids and the number of new tokens of each, in the order the tokens are concatenated.
Sliding window, two ways (the manifest's kv_cache.window_in_kernels says which):
- in the kernels (cpu and cuda builds of this format): the attention kernels mask the window and the cache keeps
  every token, so nothing here differs from a model without one;
- TVM's (metal, older artifacts): the cache drops what leaves the window. HF's window W is TVM's W - 1 (TVM counts
  the query plus W - 1 previous tokens); prefill chunks must respect the window too (`plan_chunks` says how),
  sequences cannot be forked, and TVM reports windowed lengths: this class tracks the logical length (the rope
  position) of every sequence itself.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .host_pages import with_huge_pages
from ..errors import InputError
from .tvm_import import import_tvm

Chunk = tuple[int, int, int]  # (index into the batch, start, stop) of the tokens prefilled in one forward


class KVCache:
    def __init__(
        self,
        vm: Any,
        *,
        max_batch_size: int,
        max_total_seq_len: int,
        prefill_chunk_size: int,
        page_size: int,
        sliding_window: int | None = None,
        window_in_kernels: bool = False,
    ) -> None:
        if sliding_window is not None and sliding_window < 2:
            raise InputError(f"sliding window {sliding_window} is too small (it must be at least 2)")
        # TVM's own window (pages dropped as they leave it), unless the kernels apply it over every token
        self.evicts = sliding_window is not None and not window_in_kernels
        tvm = import_tvm()
        self._shape = tvm.runtime.ShapeTuple
        self.max_batch_size = max_batch_size
        self.max_total_seq_len = max_total_seq_len
        self.prefill_chunk_size = prefill_chunk_size
        self.page_size = page_size
        self.sliding_window = sliding_window  # HF convention
        args = [max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, int(self.evicts)]
        create = vm["create_kv"]
        self.obj = with_huge_pages(lambda: create(*(self._shape([int(n)]) for n in args)))
        get = tvm.get_global_func
        self._add = get("vm.builtin.kv_state_add_sequence")
        self._remove = get("vm.builtin.kv_state_remove_sequence")
        self._fork = get("vm.builtin.kv_state_fork_sequence")
        self._popn = get("vm.builtin.kv_state_popn")
        self._clear = get("vm.builtin.kv_state_clear")
        self._begin = get("vm.builtin.kv_state_begin_forward")
        self._end = get("vm.builtin.kv_state_end_forward")
        self._seq_len = get("vm.builtin.attention_kv_cache_get_sequence_length")
        self._pages = get("vm.builtin.attention_kv_cache_get_num_available_pages")
        self._window = get("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")
        self.lengths: dict[int, int] = {}  # logical length of each sequence

    # -- sequences ------------------------------------------------------------------------------------------
    def add_sequence(self, seq_id: int) -> None:
        if seq_id in self.lengths:
            raise InputError(f"sequence {seq_id} is already in the KV cache")
        if len(self.lengths) >= self.max_batch_size:
            raise InputError(f"the KV cache holds {len(self.lengths)} sequences already (max_batch_size)")
        self._add(self.obj, seq_id)
        if self.evicts:
            self._window(self.obj, seq_id, self.sliding_window - 1, 0)
        self.lengths[seq_id] = 0

    def remove_sequence(self, seq_id: int) -> None:
        self._require(seq_id)
        self._remove(self.obj, seq_id)
        del self.lengths[seq_id]

    def fork_sequence(self, parent: int, child: int, pos: int | None = None) -> None:
        """The child starts with the parent's first `pos` tokens (default: all of them). TVM shares the pages
        before pos and copies a page that pos cuts in two. A parent that will grow must be forked strictly inside
        (pos < its length): TVM refuses to append to a sequence whose last block a fork shares."""
        self._require(parent)
        if child in self.lengths:
            raise InputError(f"sequence {child} is already in the KV cache")
        if self.evicts:
            raise InputError("forking a sequence is not supported with TVM's sliding window (an artifact made "
                             "before ember applied windows in its kernels, or a metal build)")
        if len(self.lengths) >= self.max_batch_size:
            raise InputError(f"the KV cache holds {len(self.lengths)} sequences already (max_batch_size)")
        length = self.lengths[parent]
        if pos is None:
            pos = length
        if not 0 < pos <= length:
            raise InputError(f"cannot fork sequence {parent} of length {length} at position {pos}")
        self._fork(self.obj, parent, child, -1 if pos == length else pos)
        self.lengths[child] = pos

    def popn(self, seq_id: int, n: int) -> None:
        """Drop the last n tokens of a sequence."""
        self._require(seq_id)
        if not 0 <= n <= self.lengths[seq_id]:
            raise InputError(f"cannot drop {n} tokens from sequence {seq_id} of length {self.lengths[seq_id]}")
        self._popn(self.obj, seq_id, n)
        self.lengths[seq_id] -= n

    def clear(self) -> None:
        self._clear(self.obj)
        self.lengths.clear()

    def _require(self, seq_id: int) -> None:
        if seq_id not in self.lengths:
            raise InputError(f"sequence {seq_id} is not in the KV cache")

    # -- forward --------------------------------------------------------------------------------------------
    @contextmanager
    def forward(self, seq_ids: Sequence[int], lengths: Sequence[int]) -> Iterator[None]:
        """Bracket one model call: the tokens of seq_ids[i] (lengths[i] of them) are concatenated in this order."""
        for s in seq_ids:
            self._require(s)
        if len(set(seq_ids)) != len(seq_ids):
            raise InputError(f"a sequence appears twice in one forward: {list(seq_ids)}")
        self._begin(self.obj, self._shape([int(s) for s in seq_ids]), self._shape([int(n) for n in lengths]))
        yield
        self._end(self.obj)
        for s, n in zip(seq_ids, lengths):
            self.lengths[s] += int(n)

    # -- queries --------------------------------------------------------------------------------------------
    def sequence_length(self, seq_id: int) -> int:
        """Logical length (tokens seen so far), whatever the window."""
        self._require(seq_id)
        return self.lengths[seq_id]

    def cached_length(self, seq_id: int) -> int:
        """Tokens TVM keeps for the sequence (min(length, W - 1) with TVM's sliding window)."""
        self._require(seq_id)
        return int(self._seq_len(self.obj, seq_id))

    def available_pages(self) -> int:
        return int(self._pages(self.obj))

    def plan_chunks(
        self, seq_ids: Sequence[int], lengths: Sequence[int], token_budget: int | None = None
    ) -> list[list[Chunk]]:
        """Chunks for prefilling lengths[i] new tokens of each sequence (see `plan_chunks` below); at most
        `token_budget` (default and cap: prefill_chunk_size) tokens per forward."""
        budget = min(token_budget or self.prefill_chunk_size, self.prefill_chunk_size)
        history = [self.sequence_length(s) for s in seq_ids]
        return plan_chunks(lengths, budget, history=history, window=self.sliding_window if self.evicts else None)


def plan_chunks(
    lengths: Sequence[int], budget: int, history: Sequence[int] | None = None, window: int | None = None
) -> list[list[Chunk]]:
    """Split a ragged prefill into forwards of at most `budget` tokens, each sequence at most once per forward,
    each sequence's chunks in order (a forward may mix the tail of one sequence with the head of the next).

    With a sliding window W (HF convention), TVM attends from a chunk to the last W - 1 cached tokens plus ALL
    earlier tokens of the chunk, so a chunk starting after h tokens is exact only while h + len <= W, or when it is
    one token long (checked against HF Mistral, tests/runtime). Chunks are therefore capped at W - 1 tokens, and
    at max(1, W - h): once the window is full, the rest of a long prompt goes in one token at a time.
    """
    if budget < 1:
        raise InputError(f"prefill chunks need a token budget >= 1, got {budget}")
    history = list(history) if history is not None else [0] * len(lengths)
    done = [0] * len(lengths)
    steps: list[list[Chunk]] = []
    while any(d < n for d, n in zip(done, lengths)):
        step: list[Chunk] = []
        left = budget
        for i, n in enumerate(lengths):
            if left == 0:
                break
            take = min(n - done[i], left)
            if window is not None:
                take = min(take, window - 1, max(1, window - history[i] - done[i]))
            if take > 0:
                step.append((i, done[i], done[i] + take))
                done[i] += take
                left -= take
        steps.append(step)
    return steps
