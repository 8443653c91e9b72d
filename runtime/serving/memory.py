"""The serving KV cache sized from the device's free memory (`ember serve --gpu-memory-utilization`).

After the weights are loaded, `utilization` of the memory still free goes to the KV cache (the rest stays for
activations and the runtime's workspace): tokens = that many bytes / (2 x layers x kv heads x head dim x dtype
size), in whole pages. Free memory: TVM's `available_global_memory` where the device reports it (cuda), else the
host's available memory (cpu).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InputError
from ..artifact import KVCacheInfo


def kv_bytes_per_token(kv: KVCacheInfo) -> int:
    return 2 * kv.num_layers * kv.num_kv_heads * kv.head_dim * np.dtype(kv.dtype).itemsize


def free_bytes(device: Any) -> int:
    free = getattr(device, "available_global_memory", None)
    if isinstance(free, int) and free > 0:
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def kv_tokens_from_memory(kv: KVCacheInfo, device: Any, utilization: float, context_length: int,
                          most: int) -> int:
    """KV cache tokens for `utilization` of the free memory, at most `most`, at least one whole context."""
    if isinstance(utilization, bool) or not isinstance(utilization, (int, float)) or not 0 < utilization <= 1:
        raise InputError.about(f"{{gpu_memory_utilization}} must be in (0, 1], got {utilization!r}")
    free = free_bytes(device)
    per_token = kv_bytes_per_token(kv)
    tokens = int(free * utilization) // per_token // kv.page_size * kv.page_size
    need = -(-context_length // kv.page_size) * kv.page_size
    if tokens < need:
        raise InputError(f"{utilization:g} of the {free / 2**30:.2f} GiB free holds {tokens} KV tokens "
                         f"({per_token} bytes each), fewer than one sequence of {context_length} tokens needs: "
                         "raise --gpu-memory-utilization or lower --max-model-len")
    return min(tokens, most)
