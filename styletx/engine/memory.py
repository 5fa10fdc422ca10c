"""How much memory the training data will take, measured while it is read.

A mistyped ``--size 5000`` (for 500) enlarged 27 small photos to 5000 px: the process grew
until the kernel killed it (22.7 GB, exit 137, no word of why), and a notebook's kernel just
died. Training data stays in memory for the whole run, so the reader watches how much each
file it reads adds, projects that over the files still to come and the copy that encoding
makes, and stops with a usage error naming ``--size`` once the projection passes half of what
the machine has free. Linux only (``/proc``); elsewhere nothing is watched.
"""

from __future__ import annotations

import os
from pathlib import Path

from styletx.contract.errors import UsageError

ENCODED_COPY = 1.5  # the data held at the peak, in prepared samples: the samples themselves
#                     (images: float32 pixels) and their encoded float16 tensors
MEMORY_SHARE = 0.5  # of the free memory, the most the data may take: the networks' activations
#                     at a crop of that --size need the rest (a tiny CycleGAN on 5000-px
#                     crops took 8 GB beside the 16 GB of its photos, peaking at 23.9 GB of 24)
MIN_FILES = 2  # files read after a folder's first before a projection is trusted (the first
#               one is not counted: it pulls in codecs and compiles resamplers, hundreds of MB
#               that the next files do not add)
GB = 1e9


def resident_bytes() -> int | None:
    """This process's resident memory, or None where it cannot be read."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def available_bytes() -> int | None:
    """Memory this process may still take: the kernel's MemAvailable, less where a control
    group (a container) limits it further; None where it cannot be read."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, ValueError, KeyError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


class MemoryWatch:
    """Made before the training files are read; ``check`` after each one."""

    def __init__(self, size: int):
        self.size = size
        self.start = resident_bytes()
        self.available = available_bytes()
        self.folder_start: int | None = None

    def new_folder(self) -> None:
        self.folder_start = None  # set once the folder's first file is in

    def check(self, read: int, total: int, what: str) -> None:
        """``read`` of the ``total`` files of ``what`` are in memory: refuse to go on when all of
        them, encoded, will not fit."""
        if self.start is None or self.available is None:
            return
        now = resident_bytes()
        if now is None:
            return
        if read == 1:
            self.folder_start = now
        if self.folder_start is None or read < 1 + MIN_FILES:
            return
        per_file = max(0, now - self.folder_start) / (read - 1)
        projected = (now - self.start + per_file * (total - read)) * ENCODED_COPY
        if projected > MEMORY_SHARE * self.available:
            raise UsageError(
                f"the training files at --size {self.size} would take about "
                f"{projected / GB:.1f} GB of memory ({read} of the {total} files of {what} "
                f"read: {(now - self.start) / GB:.1f} GB so far), more than half of the "
                f"{self.available / GB:.1f} GB free, and training at that size needs the "
                "rest; use a smaller --size (or fewer files)")
