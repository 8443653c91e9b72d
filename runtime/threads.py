"""The size of TVM's CPU thread pool: every physical core ember may run on, unless the user says otherwise.

TVM sizes a thread's pool when that thread first runs a parallel kernel, from `TVM_NUM_THREADS` (else
`OMP_NUM_THREADS`, else half the logical cores on x86: 1 on a 2-core VM). `runtime.config_threadpool` cannot
raise it past that bound, and each thread has its own pool, so ember sets `TVM_NUM_THREADS` for the process
(before any kernel runs) when neither variable is set, and leaves it set so every thread gets the same pool.
"""
from __future__ import annotations

import os
from pathlib import Path

THREAD_ENV = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")
_SYS_CPU = Path("/sys/devices/system/cpu")


def physical_cores(cpus: set[int] | None = None, sys_cpu: Path = _SYS_CPU) -> int:
    """Physical cores among the CPUs this process may run on (hyper-thread siblings count once)."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: set[str] = set()
    for cpu in cpus:
        try:
            cores.add((sys_cpu / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:  # no sysfs (not Linux, or a sandbox): count logical CPUs
            return max(1, len(cpus))
    return max(1, len(cores))


def configure_cpu_threads() -> None:
    """Before the first kernel: TVM_NUM_THREADS = physical cores, unless TVM_NUM_THREADS/OMP_NUM_THREADS is set."""
    if not any(os.environ.get(name) for name in THREAD_ENV):
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())


def pool_size() -> int:
    """Threads TVM's pool uses for kernels launched from this thread."""
    from .tvm_import import import_tvm

    return int(import_tvm().runtime.num_threads())
