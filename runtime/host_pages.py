"""Transparent huge pages for memory TVM's runtime allocated on the host (the paged KV cache).

TVM allocates a cache's pages itself and does not expose their address. Large allocations are fresh anonymous
mappings, so the ones that appear while a cache is created are found in /proc/self/maps and advised with
madvise(MADV_HUGEPAGE) before anything is written to them (decode attention streams the keys and values of every
layer each token, and on 4 KiB pages that stream stalls on the TLB). Linux only; elsewhere nothing happens.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import TypeVar

MADV_HUGEPAGE = 14
MIN_BYTES = 8 << 20  # only mappings this large: the cache's pages, not small bookkeeping arrays

T = TypeVar("T")


def _anonymous_mappings() -> set[tuple[int, int]]:
    try:
        with open("/proc/self/maps") as handle:
            lines = handle.readlines()
    except OSError:
        return set()
    out = set()
    for line in lines:
        parts = line.split()
        if len(parts) == 5 and parts[1].startswith("rw"):  # no path: anonymous
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if end - start >= MIN_BYTES:
                out.add((start, end))
    return out


def with_huge_pages(allocate: Callable[[], T]) -> T:
    """allocate(), with every large anonymous mapping it created advised to use huge pages."""
    if not os.path.exists("/proc/self/maps"):
        return allocate()
    before = _anonymous_mappings()
    result = allocate()
    new = _anonymous_mappings() - before
    if new:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        for start, end in new:
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_HUGEPAGE)
    return result
