"""The run folder: everything needed to resume training or convert with a trained model.

    RUN/config.json        styletx version, translator + config, domain, encoders, data, step
    RUN/model.safetensors  network weights ("net.<name>.<param>") and fitted encoder state
                           ("encoder.<a|b>.<key>"); metadata records the step
    RUN/resume.pt          optimizers, schedulers, translator extra state, RNG and data-sampler
                           state; tensors and plain containers only (loaded with weights_only=True)
    RUN/log.jsonl          one JSON line per logged step
    RUN/samples/           preview grids

Every file is written to a temporary name and renamed into place, so a crash mid-save leaves
the previous checkpoint usable. Nothing here unpickles classes or runs code from a checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import StyletxError, UsageError, WriteError, is_out_of_memory

CONFIG, WEIGHTS, RESUME, LOG, SAMPLES = (
    "config.json", "model.safetensors", "resume.pt", "log.jsonl", "samples",
)
PREVIOUS = ".previous"  # the checkpoint pair before the last one
REQUIRED_KEYS = ("translator", "config", "domain", "encoders", "data", "train", "step")


FULL_DISK_BYTES = 1 << 20  # a write that failed with less free space than this ran out of it
NO_SPACE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it into place on success.

    A write refused by the file system raises ``WriteError`` naming ``path`` (see
    ``write_error``); the temporary file is removed whatever happens.
    """
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        blocker = file_in_the_way(path.parent)
        if blocker is not None:
            raise WriteError(path, f"{blocker} is a file, not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError, RuntimeError) as exc:
        error = write_error(path, exc)  # measured before the partial file is removed
        if error is None:
            raise
        raise error from None
    finally:
        with contextlib.suppress(OSError):  # e.g. the folder could not be made
            tmp.unlink(missing_ok=True)


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
    # safetensors refuses shared or non-contiguous storage: give it plain copies.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    write_atomic(run / WEIGHTS, lambda tmp: save_file(plain, tmp, metadata={"step": str(step)}))


def load_weights(run: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The tensors of ``model.safetensors`` and the step they were saved at."""
    path = run / WEIGHTS
    if not path.is_file():
        raise StyletxError(f"{path}: weights file is missing (has training saved a checkpoint?)")
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            step = int((f.metadata() or {}).get("step", -1))
    except (SafetensorError, OSError, ValueError) as exc:
        raise StyletxError(f"{path}: weights file is corrupt or truncated ({exc})") from None
    return tensors, step


def save_checkpoint(run: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    step: int) -> None:
    """Weights and resume state of one step. Each file is replaced atomically, and the pair
    before is kept (hard links in ``.previous/``), so a crash between the two replacements still
    leaves a matching pair for ``load_checkpoint``."""
    _keep_previous(run)
    save_weights(run, tensors, step)
    write_atomic(run / RESUME, lambda tmp: torch.save(state, tmp))


def _keep_previous(run: Path) -> None:
    if not ((run / WEIGHTS).is_file() and (run / RESUME).is_file()):
        return
    tmp = run / f".previous.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name in (WEIGHTS, RESUME):
            try:
                os.link(run / name, tmp / name)
            except OSError:  # a file system without hard links
                shutil.copy2(run / name, tmp / name)
        shutil.rmtree(run / PREVIOUS, ignore_errors=True)
        os.replace(tmp, run / PREVIOUS)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(run / PREVIOUS, exc) from None


def load_checkpoint(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The newest weights and resume state saved at the same step (see ``save_checkpoint``)."""
    tensors, step = load_weights(run)
    state = load_resume(run)
    if state["step"] == step:
        return tensors, state
    previous = run / PREVIOUS
    for weights_dir, resume_dir in ((run, previous), (previous, run), (previous, previous)):
        try:
            other_tensors, other_step = load_weights(weights_dir)
            other_state = load_resume(resume_dir)
        except StyletxError:
            continue
        if other_step == other_state["step"]:
            return other_tensors, other_state
    raise StyletxError(
        f"{run}: weights (step {step}) and resume state (step {state['step']}) disagree and no "
        "earlier matching pair exists; the last save was cut short"
    )


def load_resume(run: Path) -> dict[str, Any]:
    path = run / RESUME
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StyletxError(f"{path}: resume state is missing; cannot continue training") from None
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for damaged files
        raise StyletxError(f"{path}: resume state is corrupt ({exc})") from None


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
