"""Progress bars on stderr, and when not to draw one.

tqdm draws a bar where stderr is a terminal (``disable=None``) and fits it to the terminal's
width. Some terminals report a width of 0 columns (ptys inside containers and CI runners):
there tqdm draws a bar of nothing, and a long training run looks frozen. Such a terminal gets
no bar, so that the commands' plain progress lines (written where the bar is off) take over.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm

MIN_COLUMNS = 20  # narrower than this, a bar shows nothing useful: plain lines instead


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
