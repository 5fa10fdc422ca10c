"""How styletx writes a file: atomically (a temporary file beside it, fsynced and renamed into
place), with a one-line ``WriteError`` naming the file when the file system refuses (a full
disk, a file where a folder should be, no permission). The engine, the libraries and plugins
write through ``atomic_path`` so that no fault leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from styletx.contract.errors import StyletxError, UsageError, WriteError, is_out_of_memory

FULL_DISK_BYTES = 1 << 20  # a write that failed with less free space than this ran out of it
NO_SPACE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}
TEMPORARY = re.compile(r"^\.(.+)\.tmp-(\d+)(\.\w+)?$")  # atomic_path's names: ".NAME.tmp-PID.EXT"


@contextlib.contextmanager
def atomic_path(path: Path, commit: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it into place on success.

    A write refused by the file system raises ``WriteError`` naming ``path`` (see
    ``write_error``); the temporary file is removed whatever happens. With ``commit`` False the
    caller fsyncs and renames it (``save_checkpoint`` renames two files together).
    """
    tmp = temporary_path(path)
    try:
        blocker = file_in_the_way(path.parent)
        if blocker is not None:
            raise WriteError(path, f"{blocker} is a file, not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if commit:
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync_folder(path.parent)  # the rename itself survives a power cut
    except (OSError, SafetensorError, RuntimeError) as exc:
        error = write_error(path, exc)  # measured before the partial file is removed
        if error is None:
            raise
        raise error from None
    finally:
        with contextlib.suppress(OSError):  # e.g. the folder could not be made
            tmp.unlink(missing_ok=True)


def write_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """A safetensors file, made in memory and written by us: safetensors' own ``save_file``
    writes a ``.tmpXXXXXX`` of its own beside ``path`` (0600, and left behind by a kill
    mid-write, where ``remove_stale_temporaries`` cannot tell it from another program's)."""
    from safetensors.torch import save

    path.write_bytes(save(tensors, metadata=metadata))


def temporary_path(path: Path) -> Path:
    """Where ``atomic_path`` writes ``path`` first: ``.NAME.tmp-PID.EXT`` beside it."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def remove_stale_temporaries(folder: Path, of: Iterable[Path] | None = None) -> list[Path]:
    """Remove the temporary files (and folders) of ``atomic_path`` in ``folder`` whose process
    is gone (killed mid-write: no ``finally`` ran); only those of the paths ``of`` when given
    (an output folder also holds the user's own files). Returns what was removed."""
    names = None if of is None else {(p.stem, p.suffix) for p in of if p.parent == folder}
    removed = []
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        found = TEMPORARY.match(entry.name)
        if found is None or _alive(int(found.group(2))):
            continue
        if names is not None and (found.group(1), found.group(3) or "") not in names:
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot sync a folder; nothing to do
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_error(path: Path, exc: BaseException) -> WriteError | None:
    """``exc``, raised while writing ``path``, as a ``WriteError``; None if it is not a write
    problem. An ``OSError`` or ``SafetensorError`` always is. Another ``RuntimeError`` is when
    the disk is full: torch.save and libsndfile then say "unexpected pos 576 vs 534" or
    "System error"."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return WriteError(path, NO_SPACE[exc.errno], disk_full=True)
    if isinstance(exc, SafetensorError):  # "I/O error: No space left on device (os error 28)"
        for number, reason in NO_SPACE.items():
            if f"os error {number})" in str(exc):
                return WriteError(path, reason, disk_full=True)
        return WriteError(path, str(exc))
    if isinstance(exc, OSError):
        return WriteError(path, exc.strerror or str(exc))
    if is_out_of_memory(exc) or not _disk_full(path.parent):
        return None
    return WriteError(path, NO_SPACE[errno.ENOSPC], disk_full=True)


def file_in_the_way(folder: Path) -> Path | None:
    """The file at ``folder`` or at one of its parents that stops it being a folder, if any."""
    place = _nearest_existing(folder)
    return place if place is not None and not place.is_dir() else None


def check_output_folder(folder: Path, option: str = "-o") -> None:
    """A usage error naming ``option`` when a file stands where ``folder`` must go."""
    blocker = file_in_the_way(folder)
    if blocker is not None:
        raise UsageError(f"{option} {folder}: {blocker} is a file, not a folder")


WRITE_CHECK = ".styletx-write-check"  # check_writable's file (and its temporary's name part)


def check_writable(folder: Path, option: str = "-o") -> None:
    """Make ``folder`` and write a file in it, or stop with one line saying why not (a
    ``StyletxError``; a full disk stays a ``WriteError``): before any input is read, not at the
    first output (a read-only mount was found only after every training file was read). One
    process at a time per folder: torchrun's processes leave it to rank 0."""
    probe = folder / WRITE_CHECK
    try:
        with atomic_path(probe) as tmp:
            tmp.write_bytes(b"")
        probe.unlink()
    except WriteError as exc:
        if exc.disk_full:
            raise
        raise StyletxError(f"{option} {folder}: cannot write there ({exc.reason})") from None


def _disk_full(folder: Path) -> bool:
    place = _nearest_existing(folder)
    return (place is not None and place.is_dir()
            and shutil.disk_usage(place).free < FULL_DISK_BYTES)


def _nearest_existing(folder: Path) -> Path | None:
    """``folder``, or the nearest of its parents that exists."""
    return next((place for place in (folder, *folder.parents) if place.exists()), None)


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)
