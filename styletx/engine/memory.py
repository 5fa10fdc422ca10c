"""How much memory the training data will take, counted while it is read.

A mistyped ``--size 5000`` (for 500) enlarged 27 small photos to 5000 px: the process grew
until the kernel killed it (22.7 GB, exit 137, no word of why), and a notebook's kernel just
died. Training data stays in memory for the whole run, so the reader adds up the bytes of the
prepared samples it has read, projects that over the files still to come and the copy that
encoding makes, and stops with a usage error naming ``--size`` once the projection passes half
of what the machine has free. The samples' own bytes, not the process's resident memory: that
also holds the full-size photos other reading threads are decoding at that moment, which
projected over a thousand files refused a folder of ordinary photos. Linux only (``/proc``);
elsewhere nothing is watched.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from styletx.contract.errors import UsageError

ENCODED_COPY = 1.5  # the data held at the peak, in prepared samples: the samples themselves
#                     (images: float32 pixels) and their encoded float16 tensors
MEMORY_SHARE = 0.5  # of the free memory, the most the data may take: the networks' activations
#                     at a crop of that --size need the rest (a tiny CycleGAN on 5000-px
#                     crops took 8 GB beside the 16 GB of its photos, peaking at 23.9 GB of 24)
MIN_FILES = 3  # files read before the typical one (their median) is projected over the rest:
#               one long recording among short ones does not stand for all of them
GB = 1e9


def sample_bytes(item: Any) -> int:
    """The bytes of the arrays and tensors in a prepared sample (its fields), or in a pair of
    them; 0 for what holds none (a plugin's sample of another kind is not counted)."""
    if isinstance(item, np.ndarray):
        return item.nbytes
    if isinstance(item, torch.Tensor):
        return item.element_size() * item.nelement()
    if isinstance(item, tuple | list):
        return sum(sample_bytes(part) for part in item)
    fields = getattr(item, "__dict__", None)
    if fields is None:
        return 0
    return sum(sample_bytes(v) for v in fields.values()
               if isinstance(v, np.ndarray | torch.Tensor))


def available_bytes(swap: bool = False) -> int | None:
    """Memory this process may still take: the kernel's MemAvailable (and, with ``swap``, the
    free swap), less where a control group (a container) limits it further (its page cache
    the kernel can reclaim counted as free), shared by the training processes of this
    machine; None where it cannot be read."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
        if swap:
            available += int(fields.get("SwapFree", "0 kB").split()[0]) * 1024
    except (OSError, ValueError, KeyError):
        return None
    limited = _control_group_available()
    if limited is not None:
        available = min(available, limited)
    return available // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) or None


def _control_group_available() -> int | None:
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((cgroup / "memory.current").read_text())
        stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
        reclaimable = int(stat.get("inactive_file", 0))
    except (OSError, ValueError):
        return None
    return max(0, int(limit) - used + reclaimable) or None


class MemoryWatch:
    """Made before the training files are read; ``check`` after each one."""

    def __init__(self, size: int):
        self.size = size
        self.available = available_bytes()
        self.held = 0  # bytes of every sample read so far
        self.sizes: list[int] = []  # bytes of each sample of this folder so far
        self.largest = 0  # of them

    def new_folder(self) -> None:
        self.sizes, self.largest = [], 0

    def check(self, item: Any, read: int, total: int, what: str) -> None:
        """``item`` is the ``read``-th of the ``total`` files (or pairs) of ``what``: refuse to
        go on when all of them, with the folders before, will not fit once encoded."""
        size = sample_bytes(item)
        self.sizes.append(size)
        self.held += size
        self.largest = max(self.largest, size)
        if self.available is None or read < min(MIN_FILES, total):
            return
        limit = MEMORY_SHARE * self.available
        if (self.held + self.largest * (total - read)) * ENCODED_COPY <= limit:
            return  # fits even if every file to come were the largest: no median needed
        projected = (self.held + float(np.median(self.sizes)) * (total - read)) * ENCODED_COPY
        if projected > limit:
            unit = "pairs" if what == "pairs" else f"files of {what}"
            raise UsageError(
                f"the training files at --size {self.size} would take about "
                f"{projected / GB:.1f} GB of memory ({read} of the {total} {unit} read: "
                f"{self.held / GB:.1f} GB), more than half of the "
                f"{self.available / GB:.1f} GB free, and training at that size needs the "
                "rest; use a smaller --size (or fewer files)")


LIMIT_OFF = "STYLETX_MEMORY_LIMIT"  # set to 0: no limit (allocations as the system allows)
LIMIT_HEADROOM = 256 * 2**20  # above the free memory: address space a thread's stack or an
#                               allocator reserves without touching (RLIMIT_DATA counts it)
_limit = {"holders": 0, "before": None}  # the trainings of this process inside the limit
_limit_lock = threading.Lock()


@contextlib.contextmanager
def allocations_fail_past_free_memory(device: Any) -> Iterator[None]:
    """While training on the CPU: an allocation that would take the process past the memory
    (and swap) that is free now fails, as PyTorch's "can't allocate memory" or a MemoryError,
    which the loop reports as running out of memory (lower --batch-size or --size) with its
    steps saved. Without it the kernel killed the process (exit 137, not a word; a trial's
    --batch-size 100000 and --size 5000 both). Linux's RLIMIT_DATA, set to the process's data
    now plus what is free and ``LIMIT_HEADROOM``; a lower limit already set is kept. Set once
    for the trainings of a process that overlap (threads of a Python caller) and put back when
    the last ends. Not on a GPU (its driver maps host memory of its own), nor with
    STYLETX_MEMORY_LIMIT=0."""
    if torch.device(device).type != "cpu" or os.environ.get(LIMIT_OFF) == "0":
        yield
        return
    with _limit_lock:
        if _limit["holders"] == 0:
            _limit["before"] = _set_limit()
        _limit["holders"] += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit["holders"] -= 1
            if _limit["holders"] == 0 and _limit["before"] is not None:
                _restore_limit(_limit["before"])
                _limit["before"] = None


def _set_limit() -> tuple[int, int] | None:
    """Limit the data segment as above; the limits before, or None where none was set."""
    import resource

    torch.ones(2**18).add_(1)  # the thread pool started first: its threads' stacks count
    held, available = _data_bytes(), available_bytes(swap=True)
    if held is None or available is None:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = held + available + LIMIT_HEADROOM
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft != resource.RLIM_INFINITY and soft <= limit:
            return None  # a lower limit of the user's own stays
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (OSError, ValueError):
        return None
    return soft, hard


def _restore_limit(before: tuple[int, int]) -> None:
    import resource

    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_DATA, before)


def _data_bytes() -> int | None:
    """The process's data (VmData: what RLIMIT_DATA counts), or None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
