"""Which KV pages each sequence in the cache references: a mirror of TVM's paged KV cache, kept by the scheduler so
it can plan a step's pages without asking TVM (and so TVM never runs out in the middle of a forward).

TVM keeps a sequence as a chain of blocks, each a list of pages; forking shares the parent's blocks with the child
(the parent's block is split at the page holding the fork position) and a page is freed when no chain holds it.
A sequence here is its chain's pages in order, each with the position of its first token, and how many of the last
ones are its own block's. Forked at position p, the child shares the parent's p // page_size whole pages; if p cuts
a page (at the parent's end too), the child gets a copy of that page as the first of its own block
(tests/runtime/test_serving_prefix.py checks these counts against TVM's available pages).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ...errors import InputError


def pages_for(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


@dataclass
class _Chain:
    pages: list[tuple[int, int]] = field(default_factory=list)  # (page id, position of its first token)
    own_start: int = 0  # position where the sequence's own block begins
    own: int = 0  # how many of the last pages are its own block's
    length: int = 0


class PageTable:
    def __init__(self, total: int, page_size: int) -> None:
        self.total = total
        self.page_size = page_size
        self._chains: dict[int, _Chain] = {}
        self._refs: dict[int, int] = {}  # page id -> chains holding it
        self._ids = itertools.count()

    # -- facts ----------------------------------------------------------------------------------------------
    @property
    def used(self) -> int:
        return len(self._refs)

    @property
    def free(self) -> int:
        return self.total - self.used

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._chains

    def length(self, seq_id: int) -> int:
        return self._chains[seq_id].length

    def own_pages(self, seq_id: int) -> int:
        return self._chains[seq_id].own

    def own_pages_at(self, seq_id: int, length: int) -> int:
        """The pages of the sequence's own block once it holds `length` tokens."""
        chain = self._chains[seq_id]
        return pages_for(length - chain.own_start, self.page_size)

    def exclusive(self, seq_id: int) -> int:
        """Pages that removing the sequence would free (those no other chain holds)."""
        return sum(1 for page, _ in self._chains[seq_id].pages if self._refs[page] == 1)

    def pages_of(self, seq_ids: set[int] | list[int]) -> int:
        """Distinct pages the given sequences hold."""
        return len({page for s in seq_ids for page, _ in self._chains[s].pages})

    # -- changes --------------------------------------------------------------------------------------------
    def add(self, seq_id: int) -> None:
        if seq_id in self._chains:
            raise InputError(f"sequence {seq_id} has pages already")
        self._chains[seq_id] = _Chain()

    def own_start_after_fork(self, parent: int, pos: int) -> int:
        """Where a child forked at `pos` starts its own block (a page pos cuts is copied into it)."""
        return pos - pos % self.page_size

    def fork(self, parent: int, child: int, pos: int) -> None:
        """The child holds the parent's first `pos` tokens (TVM's kv_state_fork_sequence at pos)."""
        chain = self._chains[parent]
        if not 0 < pos <= chain.length:
            raise InputError(f"cannot fork sequence {parent} of length {chain.length} at {pos}")
        if child in self._chains:
            raise InputError(f"sequence {child} has pages already")
        whole, offset = divmod(pos, self.page_size)
        new = _Chain(chain.pages[:whole], whole * self.page_size, 0, pos)
        for page, _ in new.pages:
            self._refs[page] += 1
        if offset:
            page = next(self._ids)
            new.pages.append((page, whole * self.page_size))
            new.own = 1
            self._refs[page] = 1
        self._chains[child] = new

    def extend(self, seq_id: int, length: int) -> int:
        """The sequence now holds `length` tokens; returns how many pages that took."""
        chain = self._chains[seq_id]
        need = pages_for(length - chain.own_start, self.page_size) - chain.own
        for _ in range(max(0, need)):
            page = next(self._ids)
            chain.pages.append((page, chain.own_start + chain.own * self.page_size))
            chain.own += 1
            self._refs[page] = 1
        chain.length = length
        return max(0, need)

    def remove(self, seq_id: int) -> None:
        for page, _ in self._chains.pop(seq_id).pages:
            self._refs[page] -= 1
            if not self._refs[page]:
                del self._refs[page]

    def clear(self) -> None:
        self._chains.clear()
        self._refs.clear()
