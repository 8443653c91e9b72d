"""Prefix caching: a radix tree over token ids whose entries are sequences in the KV cache that a new request may
fork from, reusing their pages for the prompt prefix it shares with them.

An entry is either a finished sequence kept in the cache (a *holder*: its TVM sequence stays, holding its pages,
until evicted) or a running sequence whose prompt is computed (a *source*: n > 1 choices and concurrent requests
fork from it; it leaves the tree when it is preempted or aborted, and becomes a holder when it finishes). Holders
are evicted least recently used first, when pages are needed or when more holders than `max_holders` wait.
Nothing here touches TVM: the scheduler turns matches into forks and evictions into removals.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field


@dataclass
class _Node:
    edge: tuple[int, ...] = ()
    children: dict[int, _Node] = field(default_factory=dict)
    owners: set[int] = field(default_factory=set)  # entries whose tokens run through all of this node


@dataclass
class Entry:
    seq_id: int
    tokens: tuple[int, ...]
    holder: bool
    last_used: int


class PrefixCache:
    def __init__(self, max_holders: int) -> None:
        self.max_holders = max_holders
        self.root = _Node()
        self.entries: dict[int, Entry] = {}
        self._clock = itertools.count()
        self.hits = 0  # requests that forked a cached prefix
        self.hit_tokens = 0  # prompt tokens they did not compute

    @property
    def holders(self) -> list[int]:
        return [e.seq_id for e in self.entries.values() if e.holder]

    def match(self, tokens: Seq[int]) -> tuple[int, int] | None:
        """The entry sharing the longest prefix with `tokens`, and that prefix's length (None: no entry shares
        one). The entry counts as just used."""
        node, depth, best = self.root, 0, None
        while True:
            child = node.children.get(tokens[depth]) if depth < len(tokens) else None
            if child is None:
                break
            common = _common(child.edge, tokens, depth)
            if common == 0 or not child.owners:
                break
            best = (child, depth + common)
            if common < len(child.edge):
                break
            node, depth = child, depth + common
        if best is None:
            return None
        target, length = best
        entry = max((self.entries[s] for s in target.owners), key=lambda e: (e.holder, e.last_used))
        entry.last_used = next(self._clock)
        return entry.seq_id, length

    def insert(self, seq_id: int, tokens: Seq[int], holder: bool) -> list[int]:
        """Enter (or re-enter) a sequence; returns the holders that are now redundant (their tokens are a prefix
        of this one's), which the caller evicts."""
        if seq_id in self.entries:
            self.remove(seq_id)
        tokens = tuple(tokens)
        if not tokens:
            return []
        node, depth, redundant = self.root, 0, []
        while depth < len(tokens):
            child = node.children.get(tokens[depth])
            if child is None:
                child = _Node(tokens[depth:])
                node.children[tokens[depth]] = child
            else:
                common = _common(child.edge, tokens, depth)
                if common < len(child.edge):  # split the edge where the tokens leave it
                    upper = _Node(child.edge[:common], {child.edge[common]: child}, set(child.owners))
                    child.edge = child.edge[common:]
                    node.children[tokens[depth]] = upper
                    child = upper
            child.owners.add(seq_id)
            node, depth = child, depth + len(child.edge)
            # a holder whose tokens end here is a prefix of this sequence's (an entry always ends at a node)
            redundant += [s for s in child.owners if s != seq_id and self.entries[s].holder
                          and len(self.entries[s].tokens) == depth]
        self.entries[seq_id] = Entry(seq_id, tokens, holder, next(self._clock))
        return redundant

    def remove(self, seq_id: int) -> None:
        entry = self.entries.pop(seq_id, None)
        if entry is None:
            return
        node, depth, tokens = self.root, 0, entry.tokens
        while depth < len(tokens):
            child = node.children[tokens[depth]]
            child.owners.discard(seq_id)
            if not child.owners:
                del node.children[tokens[depth]]
                return
            node, depth = child, depth + len(child.edge)

    def lru_holders(self) -> list[int]:
        """Holders, least recently used first."""
        return [e.seq_id for e in sorted(self.entries.values(), key=lambda e: e.last_used) if e.holder]

    def clear(self) -> None:
        self.root = _Node()
        self.entries.clear()


def _common(edge: tuple[int, ...], tokens: Seq[int], start: int) -> int:
    n = min(len(edge), len(tokens) - start)
    i = 0
    while i < n and edge[i] == tokens[start + i]:
        i += 1
    return i
