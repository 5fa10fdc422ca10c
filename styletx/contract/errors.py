"""The errors styletx shows to users as one line.

The CLI turns every ``StyletxError`` into ``Error: <message>`` on stderr and its ``exit_code``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class StyletxError(Exception):
    """A runtime failure the user can understand from one line (exit code 1)."""

    exit_code = 1


class UsageError(StyletxError):
    """The command line or its arguments are wrong (exit code 2)."""

    exit_code = 2


def not_a(kind: str, noun: str = "file") -> str:
    """"not a <kind> file" with the right article: "not an audio file", "not an image
    format"."""
    return f"not {'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind} {noun}"


class BadInputError(StyletxError):
    """One input file cannot be used; names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # pickles with both arguments (passed between processes)
        return type(self), (self.path, self.problem)


class WriteError(StyletxError):
    """A file could not be written; names it and why. ``disk_full``: nothing more will fit."""

    def __init__(self, path: str | Path, reason: str, disk_full: bool = False):
        self.path, self.reason, self.disk_full = Path(path), reason, disk_full
        super().__init__(f"cannot write {path}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.disk_full)


CPU_ALLOCATION_FAILED = "can't allocate memory"  # how PyTorch's CPU allocator says it
USE_THE_CPU = "the CPU may have more: --device cpu"


def is_out_of_memory(exc: BaseException) -> bool:
    """Did PyTorch run out of memory? A GPU's (``torch.OutOfMemoryError``, "CUDA/MPS out of
    memory") or a CPU allocation the system refused (PyTorch's allocator, C++'s, or Python's
    and NumPy's MemoryError: see ``styletx.engine.memory.allocations_fail_past_free_memory``)."""
    text = str(exc)
    return isinstance(exc, MemoryError) or isinstance(exc, RuntimeError) and (
        type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text
        or CPU_ALLOCATION_FAILED in text or "std::bad_alloc" in text)


def allocation_size(exc: BaseException) -> str:
    """How much the failed allocation asked for, as "2.00 GiB", or "" if PyTorch did not say."""
    text = str(exc)
    found = re.search(r"[Tt]ried to allocate (\d+) bytes", text)  # the CPU allocator's way
    if found:
        return f"{int(found.group(1)) / 2**30:.2f} GiB"
    found = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]?i?B)", text)  # CUDA's and MPS's
    found = found or re.search(r"allocate ([\d.]+ [KMGT]?i?B) for an array", text)  # NumPy's
    return found.group(1).replace(". ", " ") if found else ""  # NumPy writes "256. MiB"


def device_advice(exc: BaseException) -> str:
    """For an out-of-memory ``exc``: to use the CPU when a GPU ran out, else nothing."""
    on_the_cpu = isinstance(exc, MemoryError) or any(
        sign in str(exc) for sign in (CPU_ALLOCATION_FAILED, "std::bad_alloc"))
    return "" if on_the_cpu else USE_THE_CPU


def out_of_memory_problem(exc: BaseException, doing: str, advice: str | None = None) -> str:
    """One line for an out-of-memory ``exc`` that happened while ``doing``; the advice, by
    default, ``device_advice``'s."""
    size = allocation_size(exc)
    if advice is None:
        advice = device_advice(exc)
    line = f"out of memory {doing}".rstrip()
    return (line + (f" (an allocation of {size} failed)" if size else "")
            + (f"; {advice}" if advice else ""))


def some_of(items: Iterable[Any], shown: int = 5) -> str:
    """"a, b, c, d, e and 2 more": the first ``shown`` items named, the rest counted."""
    items = [str(item) for item in items]
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def one_line(exc: BaseException, limit: int = 300, type_name: bool = True) -> str:
    """``exc`` as one line for a message: its lines joined by "; ", cut at ``limit`` characters
    (torch's errors run to many lines of advice that would bury the problem)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    if not type_name:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped ``train()`` once its last step was saved; the message says
    which step and how to resume. A KeyboardInterrupt, as ``EvaluationInterrupted`` is, so that
    an ``except Exception`` around ``train()`` in a loop of runs does not swallow it and go on
    to the next run. ``exit_code``: the command's exit status (130, or 143 for SIGTERM)."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``) taken as a Ctrl-C by the command
    line, so that a command stops the same way: whole outputs kept, temporary files removed,
    one line; exit status 143 instead of 130. (The training loop takes either signal over and
    stops after its step: styletx.engine.training.loop.)"""


def raise_terminated(signum, frame) -> None:
    """The SIGTERM handler of the command line (``cli.reports_errors``)."""
    raise Terminated


def interrupt_status(exc: BaseException) -> int:
    """The shell's exit status for an interrupt: 128 + the signal's number (an interrupt that
    carries the status it asks for, as ConversionInterrupted does, gives that)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    return 143 if isinstance(exc, Terminated) else 130
