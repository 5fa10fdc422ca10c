"""Progress bars on stderr, and when not to draw one.

tqdm draws a bar where stderr is a terminal (``disable=None``) and fits it to the terminal's
width. Some terminals report a width of 0 columns (ptys inside containers and CI runners):
there tqdm draws a bar of nothing, and a long training run looks frozen. Such a terminal gets
no bar, so that the commands' plain progress lines (written where the bar is off) take over.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger("styletx")

MIN_COLUMNS = 20  # narrower than this, a bar shows nothing useful: plain lines instead
LINE_SECONDS = 30  # where no bar is drawn, Progress logs a line this often


def progress_bar(iterable: Any = None, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr: off when ``enabled`` is false, where stderr is no terminal and
    where the terminal is narrower than ``MIN_COLUMNS`` (``bar.disable`` says which)."""
    disable = None if enabled and terminal_columns() >= MIN_COLUMNS else True
    return tqdm(iterable, file=sys.stderr, disable=disable, **options)


def terminal_columns() -> int:
    """stderr's terminal width in columns; a large number where it is not a terminal (tqdm
    then turns itself off)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):  # not a terminal, or no file descriptor
        return sys.maxsize


class Progress:
    """Counted work that may take minutes: a bar where one is drawn, else (a log file, CI) an
    info line every ``LINE_SECONDS``, so that quiet work is never taken for a hang."""

    def __init__(self, total: int, what: str, unit: str, enabled: bool = True):
        self.what, self.unit, self.done = what, unit, 0
        self.bar = progress_bar(total=total, desc=what, unit=unit, leave=False, enabled=enabled)
        self.logged_at = time.monotonic()

    def update(self, count: int) -> None:
        self.done += count
        self.bar.update(count)
        if self.bar.disable and time.monotonic() - self.logged_at >= LINE_SECONDS:
            self.logged_at = time.monotonic()
            log.info("%s: %d of %d %ss", self.what, self.done, self.bar.total, self.unit)

    def close(self) -> None:
        self.bar.close()
