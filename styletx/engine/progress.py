"""Progress bars on stderr, and when not to draw one.

tqdm draws a bar where stderr is a terminal (``disable=None``) and fits it to the terminal's
width. Some terminals report a width of 0 columns (ptys inside containers and CI runners):
there tqdm draws a bar of nothing, and a long training run looks frozen. Such a terminal gets
no bar, so that the commands' plain progress lines (written where the bar is off) take over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger("styletx")

MIN_COLUMNS = 20  # narrower than this, a bar shows nothing useful: plain lines instead
LINE_SECONDS = 10.0  # where no bar is drawn, Progress logs a line this often


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
    """Counted work that may take minutes: a bar where one is drawn; else (CI, ``| tee``,
    nohup) a plain line every ``LINE_SECONDS`` with the count, the speed and the time left, as
    training prints, so that quiet work is never taken for a hang. ``enabled`` false: no bar,
    so the lines (at INFO, which -q hides)."""

    def __init__(self, verb: str, unit: str, total: int | None = None, leave: bool = True,
                 enabled: bool = True, label: str | None = None):
        self.verb, self.unit, self.total, self.done = verb, unit, total, 0
        self.bar = progress_bar(total=total, unit=unit, leave=leave, enabled=enabled,
                                desc=label)  # the bar's label
        self.began = self.printed = time.monotonic()

    def start(self, total: int) -> None:
        self.total = self.bar.total = total
        self.bar.refresh()

    def update(self, count: int = 1) -> None:
        self.done += count
        self.bar.update(count)
        now = time.monotonic()
        if not self.bar.disable or now - self.printed < LINE_SECONDS or self.done == self.total:
            return
        self.printed = now
        rate = self.done / max(now - self.began, 1e-9)
        left = f", {(self.total - self.done) / rate:.0f} s left" if self.total else ""
        log.info("%s %d/%s %s (%.2f/s%s)", self.verb, self.done, self.total or "?", self.unit,
                 rate, left)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def prefixed_messages(prefix: str, once: bool = False, level: int = logging.NOTSET):
    """Prefix what styletx logs in this thread meanwhile, at ``level`` or above, with
    ``prefix`` ("held000: ", "A: "): the code logging it (a domain, an encoder's fit) does not
    know which file or side it works on. ``once``: each message at most once (a pair's two
    halves measured alike)."""
    said: set[str] = set()
    thread = threading.get_ident()

    def prefix_it(record: logging.LogRecord) -> bool:
        if record.thread != thread or record.levelno < level:  # a background reader's
            return True  #                                      message is not about this
        if once:
            message = record.getMessage()
            if message in said:
                return False
            said.add(message)
        record.msg = f"{prefix.replace('%', '%%')}{record.msg}"
        return True

    log.addFilter(prefix_it)
    try:
        yield
    finally:
        log.removeFilter(prefix_it)


def log_failure(name: Any, *rest: Any) -> None:
    """The per-file callback that ``convert_files``, ``evaluate`` and ``score`` use when their
    caller gives none (a Python user): a file that failed (``rest``'s last item, its problem)
    is a warning naming it, as training's skipped files are; the CLI passes its own."""
    if rest and rest[-1]:
        log.warning("%s: %s", name, rest[-1])
