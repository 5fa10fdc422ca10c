"""The errors styletx shows to users as one line.

The CLI turns every ``StyletxError`` into ``Error: <message>`` on stderr and its ``exit_code``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class StyletxError(Exception):
    """A runtime failure the user can understand from one line (exit code 1)."""

    exit_code = 1


class UsageError(StyletxError):
    """The command line or its arguments are wrong (exit code 2)."""

    exit_code = 2


class BadInputError(StyletxError):
    """One input file cannot be used; names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # pickles (from a reading process) with both arguments
        return type(self), (self.path, self.problem)
