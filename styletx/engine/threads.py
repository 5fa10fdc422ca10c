"""How many threads torch computes with.

torch's default is one thread per logical CPU. On a shared machine that oversubscribes the
cores: measured on 2 cores with another busy process, training ran 10x slower than with one
thread per process (see benchmarks/threads.py). So styletx picks the count itself: the user's
``OMP_NUM_THREADS`` when set, else the physical cores this process may run on, divided among
the training processes torchrun starts on this machine.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

USER_THREADS = os.environ.get("OMP_NUM_THREADS")  # as the user started us, before set_threads


def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on (container limits included)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int] | None = None) -> int:
    """Cores among ``cpus`` (default: the usable ones), hyper-threads of one core counted once."""
    cpus = usable_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:  # no sysfs (not Linux): count logical CPUs
            cores.add(str(cpu))
    return max(1, len(cores))


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else physical cores / local training processes, >= 1."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, physical_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def set_threads(count: int | None = None) -> int:
    """Compute with ``count`` threads (None: ``default_threads()``); returns the count.

    Set through ``OMP_NUM_THREADS`` too, so that libraries that read it when they start
    (torch, Numba, OpenMP) and child processes follow; torch, if already imported, directly."""
    import sys

    from styletx.contract.errors import UsageError

    if count is not None and (isinstance(count, bool) or not isinstance(count, numbers.Integral)
                              or count < 1):  # before OMP_NUM_THREADS is set to it
        raise UsageError(f"set_threads: count must be a whole number of at least 1, or None "
                         f"for the default (got {count!r})")
    count = int(count) if count is not None else default_threads()
    os.environ["OMP_NUM_THREADS"] = str(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    return count
