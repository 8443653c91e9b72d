"""Host memory for the weights of a cpu artifact: one anonymous mapping, on transparent huge pages where the OS
offers them (Linux `madvise(MADV_HUGEPAGE)`).

A decode step streams every weight once. With 4 KiB pages a ~100 MB stream misses the TLB on every page, which
caps it well below what the caches deliver: on the 2-core x86 VM ember is measured on, reading 100 MB with two
threads runs at ~8 GB/s on 4 KiB pages and 13-27 GB/s on 2 MiB pages. Tensors are numpy views into the arena,
handed to TVM without a copy (DLPack); the views keep the mapping alive.
"""
from __future__ import annotations

import mmap
from collections.abc import Sequence

import numpy as np

HUGE_PAGE = 2 << 20
ALIGN = 256  # bytes between tensors: cache-line and vector aligned, as TVM's own allocations are


class WeightArena:
    def __init__(self, specs: Sequence[tuple[Sequence[int], str]]) -> None:
        """specs: (shape, numpy dtype name) of every tensor, in order."""
        self._offsets: list[int] = []
        size = 0
        for shape, dtype in specs:
            self._offsets.append(size)
            size += -(-int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize // ALIGN) * ALIGN
        self.nbytes = size
        self._map = mmap.mmap(-1, max(size, 1) + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.huge_pages = _advise_huge_pages(self._map)
        base = np.frombuffer(self._map, dtype=np.uint8).ctypes.data
        start = -base % HUGE_PAGE  # huge pages cover 2 MiB-aligned extents only
        self._views = [np.ndarray(tuple(int(d) for d in shape), np.dtype(dtype), buffer=self._map,
                                  offset=start + off) for (shape, dtype), off in zip(specs, self._offsets)]

    @property
    def views(self) -> list[np.ndarray]:
        return self._views


def _advise_huge_pages(region: mmap.mmap) -> bool:
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return False
    try:
        region.madvise(advice)
    except OSError:  # THP disabled ("never") or unsupported: plain pages, same results
        return False
    return True
