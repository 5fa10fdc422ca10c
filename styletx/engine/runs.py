"""The run folder: everything needed to resume training or convert with a trained model.

    RUN/config.json        styletx version, translator + config, domain, encoders, data, step
    RUN/model.safetensors  network weights ("net.<name>.<param>") and fitted encoder state
                           ("encoder.<a|b>.<key>"); metadata: the step, a SHA-256 of the
                           tensors and one of the resume.pt saved with them
    RUN/resume.pt          optimizers, schedulers, translator extra state, RNG and data-sampler
                           state; tensors and plain containers only (loaded with weights_only=True)
    RUN/.previous/         the checkpoint pair before the current one (hard links)
    RUN/.lock              held (flock) by the one process training in RUN
    RUN/log.jsonl          one JSON line per logged step
    RUN/samples/           preview grids

Every file is written to a temporary name, fsynced and renamed into place. A checkpoint is the
pair model.safetensors + resume.pt, and the pair is what must survive: both new files are whole
on disk before either is renamed, and the current pair is copied to .previous/ first only when
it is itself whole, so any sequence of crashes leaves at least one whole pair (see
docs/reliability.md). Nothing here unpickles classes or runs code from a checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from styletx.contract.errors import StyletxError, UsageError, one_line
from styletx.contract.files import (
    _fsync,
    _fsync_folder,
    atomic_path,
    temporary_path,
    write_atomic,
    write_error,
    write_tensors,
)
from styletx.contract.files import remove_stale_temporaries as remove_stale

log = logging.getLogger("styletx")

CONFIG, WEIGHTS, RESUME, LOG, SAMPLES = (
    "config.json", "model.safetensors", "resume.pt", "log.jsonl", "samples",
)
PREVIOUS = ".previous"  # the checkpoint pair before the last one
LOCK = ".lock"  # flock-ed by the training process; holds its PID
TENSORS_DIGEST, RESUME_DIGEST = "sha256", "resume_sha256"  # model.safetensors metadata keys
REQUIRED_KEYS = ("translator", "preset", "config", "domain", "encoders", "data", "train",
                 "step")


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def is_run_folder(path: Path) -> bool:
    return (path / CONFIG).is_file()


def read_config(run: Path) -> dict[str, Any]:
    if not run.exists():
        raise UsageError(f"{run}: no such run folder")
    if not is_run_folder(run):
        raise UsageError(f"{run}: not a styletx run folder (no {CONFIG})")
    try:
        config = json.loads((run / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise StyletxError(f"{run / CONFIG}: unreadable run config ({exc})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise UsageError(f"{run}: not a styletx run folder ({CONFIG} lacks {', '.join(missing)})")
    return config


def save_weights(run: Path, tensors: dict[str, torch.Tensor], step: int) -> None:
    """``model.safetensors`` alone (no resume state), e.g. for a model made outside training."""
    plain = _plain(tensors)
    write_atomic(run / WEIGHTS, lambda tmp: _write_weights(tmp, plain, {"step": str(step)}))


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage: give it plain copies.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _write_weights(tmp: Path, plain: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    write_tensors(tmp, plain, {**metadata, TENSORS_DIGEST: _tensors_digest(plain)})


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the names, types, shapes and bytes (safetensors has no checksum of its own)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(run: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The tensors of ``model.safetensors`` and the step they were saved at; those of the
    previous checkpoint, with a warning, when the file is missing or damaged."""
    tensors, metadata = _current_or_previous(run, lambda folder: _read_weights(folder / WEIGHTS),
                                             "using", lambda read: read[1].get("step", "?"))
    return tensors, int(metadata.get("step", -1))


def _current_or_previous(run: Path, read: Callable[[Path], Any], doing: str,
                         step_of: Callable[[Any], Any]) -> Any:
    """``read(run)``; if that fails (the files missing or damaged), ``read`` of .previous/
    with a warning naming the problem and the step ``doing`` (resuming from, using) it."""
    try:
        return read(run)
    except StyletxError as problem:
        if not (run / PREVIOUS / WEIGHTS).is_file():
            raise
        try:
            result = read(run / PREVIOUS)
        except StyletxError:
            raise StyletxError(f"{problem}; the previous checkpoint in {run / PREVIOUS} is "
                               "not usable either") from None
        log.warning("%s; %s the previous checkpoint (step %s)", problem, doing, step_of(result))
        return result


def has_checkpoint(run: Path) -> bool:
    """Has training saved weights in ``run``? Then it must be resumed, never started over: a
    run whose model.safetensors was lost still has the previous checkpoint's. (A resume.pt
    alone is the first save cut short: nothing to resume.)"""
    return (run / WEIGHTS).exists() or (run / PREVIOUS / WEIGHTS).exists()


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a weights file, checked against their digest if it has one."""
    if not path.is_file():
        raise StyletxError(f"{path}: weights file is missing (has training saved a checkpoint?)")
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
        int(metadata.get("step", -1))
    except OSError as exc:  # e.g. no permission: the file may well be fine
        raise StyletxError(f"{path}: cannot read the weights file ({exc.strerror})") from None
    except (SafetensorError, ValueError) as exc:
        raise StyletxError(f"{path}: weights file is corrupt or truncated "
                           f"({one_line(exc, type_name=False)})") from None
    if TENSORS_DIGEST in metadata and _tensors_digest(tensors) != metadata[TENSORS_DIGEST]:
        raise StyletxError(f"{path}: weights file is corrupt (its checksum does not match)")
    return tensors, metadata


def save_checkpoint(run: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    step: int) -> None:
    """Weights and resume state of one step, as a pair that a crash at any moment (or in any
    sequence of saves) cannot leave without a whole predecessor: both new files are written and
    fsynced under temporary names first; then the current pair, if whole, goes to .previous/;
    then resume.pt and model.safetensors are renamed into place. The weights record a digest
    of the resume state they belong to, so ``load_checkpoint`` can tell a matching pair."""
    plain = _plain(tensors)
    with atomic_path(run / RESUME, commit=False) as resume_tmp:
        torch.save(state, resume_tmp)
        _fsync(resume_tmp)
        with atomic_path(run / WEIGHTS, commit=False) as weights_tmp:
            _write_weights(weights_tmp, plain,
                           {"step": str(step), RESUME_DIGEST: _file_digest(resume_tmp)})
            _fsync(weights_tmp)
            _keep_previous(run)
            # resume.pt first: a crash between the renames leaves new resume state beside the
            # old weights (a mismatch load_checkpoint recognises), never new weights with no
            # resume state beside them, which would look like a whole first checkpoint
            os.replace(resume_tmp, run / RESUME)
            try:
                os.replace(weights_tmp, run / WEIGHTS)
            except OSError:
                _put_back_resume_state(run)
                raise
            _fsync_folder(run)
    _written[run.resolve()] = _pair_stamp(run)


# The pair each run folder holds as this process last saved it ((inode, mtime) of both files):
# _keep_previous need not read and hash it back from disk to know that it is whole.
_written: dict[Path, tuple] = {}


def _pair_stamp(run: Path) -> tuple:
    stats = [os.stat(run / name) for name in (WEIGHTS, RESUME)]
    return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in stats)


def _keep_previous(run: Path) -> None:
    """Copy the current pair to .previous/, but only a whole, matching one: after a save cut
    short, .previous/ already holds the last good pair and must keep it."""
    if not (run / WEIGHTS).is_file():
        return
    saved_here = False  # whole by construction: no need to read it back
    with contextlib.suppress(OSError):
        saved_here = _written.get(run.resolve()) == _pair_stamp(run)
    if not saved_here and _pair_problem(run) is not None:
        return
    tmp = run / f"{PREVIOUS}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name in (WEIGHTS, RESUME):
            try:
                os.link(run / name, tmp / name)  # files are only ever replaced, never rewritten
            except OSError:  # a file system without hard links
                shutil.copy2(run / name, tmp / name)
                _fsync(tmp / name)
        _fsync_folder(tmp)
        shutil.rmtree(run / PREVIOUS, ignore_errors=True)  # the current pair is whole meanwhile
        os.replace(tmp, run / PREVIOUS)
        _fsync_folder(run)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(run / PREVIOUS, exc) from None


def _put_back_resume_state(run: Path) -> None:
    """After the weights' rename failed (the new resume.pt is in place): the resume state that
    belongs to the weights still there, from .previous/ where ``_keep_previous`` just linked
    both, or none beside no weights; else loading would find a mismatched pair and fall back
    to .previous/ with a warning."""
    with contextlib.suppress(OSError):
        kept = run / PREVIOUS
        if not (run / WEIGHTS).exists():
            (run / RESUME).unlink()
        elif os.path.samefile(kept / WEIGHTS, run / WEIGHTS):
            tmp = temporary_path(run / RESUME)  # one a kill leaves is cleaned up later
            os.link(kept / RESUME, tmp)
            os.replace(tmp, run / RESUME)


def _pair_problem(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` is not a whole, matching pair; None if it is."""
    try:
        _load_pair(folder, resume_state=False)
    except StyletxError as problem:
        return str(problem)
    return None


def _load_pair(folder: Path, resume_state: bool = True):
    """(tensors, resume state or None) of the pair in ``folder``; raises StyletxError if the
    files are missing, damaged or from different saves."""
    tensors, metadata = _read_weights(folder / WEIGHTS)
    step, digest = int(metadata.get("step", -1)), metadata.get(RESUME_DIGEST)
    state = None
    if digest is None:  # saved before the digest existed: compare the steps
        state = load_resume(folder)
        if state.get("step") != step:
            raise StyletxError(
                f"{folder}: weights (step {step}) and resume state (step {state.get('step')}) "
                "are from different saves (the last save was cut short)")
    elif not (folder / RESUME).is_file():
        raise StyletxError(f"{folder / RESUME}: resume state is missing")
    elif _read_digest(folder / RESUME) != digest:
        raise StyletxError(f"{folder / RESUME}: does not belong to {WEIGHTS} (step {step}): "
                           "damaged, or the last save was cut short")
    if resume_state and state is None:
        state = load_resume(folder)
    return tensors, state


def _read_digest(path: Path) -> str:
    try:
        return _file_digest(path)
    except OSError as exc:
        raise StyletxError(f"{path}: cannot read the resume state ({exc.strerror})") from None


def load_checkpoint(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The newest whole checkpoint: the current pair, else (with a warning) the one in
    .previous/ (see ``save_checkpoint``)."""
    return _current_or_previous(run, _load_pair, "resuming from",
                                lambda pair: pair[1]["step"])


def load_resume(run: Path) -> dict[str, Any]:
    path = run / RESUME
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StyletxError(f"{path}: resume state is missing; cannot continue training") from None
    except OSError as exc:  # e.g. no permission: not a damaged file
        raise StyletxError(f"{path}: cannot read the resume state ({exc.strerror})") from None
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():  # torch's advice would run the pickle
            raise StyletxError(f"{path}: refused to load: it holds objects other than tensors "
                               "and plain containers (not a styletx resume state)") from None
        raise StyletxError(f"{path}: resume state is corrupt ({one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for damaged files
        raise StyletxError(f"{path}: resume state is corrupt or truncated "
                           f"({one_line(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise StyletxError(f"{path}: not a styletx resume state (no step)")
    return state


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` (e.g. "net.G_A."), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def append_log(run: Path, record: dict[str, Any]) -> None:
    try:
        with open(run / LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise write_error(run / LOG, exc) from None


def truncate_log(run: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resume starts from)."""
    path = run / LOG
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a line cut short by a kill
    write_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


# -- one trainer per run folder ---------------------------------------------------------------

def holds_run_lock(train: Callable) -> Callable:
    """Decorate ``train``: hold its ``out`` folder's lock (``run_lock``) while it runs."""
    signature = inspect.signature(train)

    @functools.wraps(train)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with run_lock(Path(signature.bind(*args, **kwargs).arguments["out"])):
            return train(*args, **kwargs)

    return locked


@contextlib.contextmanager
def run_lock(run: Path) -> Iterator[None]:
    """Hold ``run``'s lock: a second trainer on the same folder stops with one line instead of
    interleaving its log and checkpoints with ours. The lock is an flock on RUN/.lock, so the
    kernel drops it when the holder dies (kill -9 included): a lock is never stale. Held by
    torchrun's rank 0 only. A folder that cannot be a run (a file, another program's folder) is
    left alone for ``train`` to report. A folder that was new or empty when the lock was taken
    and holds no saved step afterwards (training failed before its first checkpoint) is
    emptied of what the command wrote (config.json, previews, the log), and removed again if
    it was made here: no run came of it. A folder that held anything before is never emptied.
    """
    made = _make_run_folder(run) if os.environ.get("RANK", "0") == "0" else None
    if made is None:
        yield
        return
    lock_made = not (run / LOCK).exists()
    fd = _acquire(run / LOCK)
    fresh = bool(made) or all(p.name == LOCK for p in run.iterdir())
    try:
        remove_stale_temporaries(run)
        yield
    finally:
        with contextlib.suppress(OSError):
            if fresh and not (run / WEIGHTS).exists():  # all in it is this command's
                for entry in run.iterdir():
                    if entry.name != LOCK:
                        _remove(entry)
            alone = [p.name for p in run.iterdir()] == [LOCK]
            if alone or (lock_made and not (run / WEIGHTS).exists()):  # no run: no lock left
                (run / LOCK).unlink()  # ours while we hold it; see _acquire for the race
            if not any(run.iterdir()):
                for folder in made:
                    folder.rmdir()
        if fd is not None:
            os.close(fd)


def _make_run_folder(run: Path) -> list[Path] | None:
    """The folders made for ``run`` (deepest first); None if it should not be locked."""
    if run.is_dir():
        if is_run_folder(run) or not any(p.name != LOCK for p in run.iterdir()):
            return []
        return None  # not a run and not empty: train refuses it
    missing = [run, *(p for p in run.parents if not p.exists())]
    try:
        run.mkdir(parents=True)
    except OSError:  # a file in the way, no permission: train reports it
        return None
    return [p for p in missing if p.exists()]


def _acquire(path: Path) -> int | None:
    """An fd holding the lock on ``path`` (None if the folder cannot hold one, e.g. read-only:
    training's write check then says so, before the files are read); StyletxError if another
    process holds it."""
    for _ in range(3):  # the holder may remove the file between our open and our lock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = ("another train() of this process" if holder == str(os.getpid())
                   else f"another styletx process{f' (PID {holder})' if holder else ''}")
            raise StyletxError(f"{path.parent}: {who} is training in this run folder; wait for "
                               "it to finish or use another --out") from None
        except OSError:  # a file system without locks (some network ones): go on unlocked
            return fd
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        os.close(fd)
    raise StyletxError(f"{path}: cannot lock the run folder (it keeps being removed)")


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    return ""


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            entry.unlink()


def remove_stale_temporaries(run: Path) -> list[Path]:
    """Remove the temporary files (and .previous.tmp-PID folders) that saves killed mid-write
    left in ``run`` and its samples/: those whose process is gone. Returns what was removed."""
    return [*remove_stale(run), *remove_stale(run / SAMPLES)]
