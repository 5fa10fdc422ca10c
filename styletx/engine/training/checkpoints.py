"""Checkpoints of a training run: everything a bit-exact resume needs (weights, optimizers,
schedulers, the translator's extra state such as image pools, the data order, the RNG)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch

from styletx.contract.errors import StyletxError, one_line
from styletx.contract.interfaces import Encoder, Translator
from styletx.engine.data import CropSampler
from styletx.engine.model import model_tensors
from styletx.engine.run_config import RunConfig
from styletx.engine.runs import CONFIG, save_checkpoint, write_json


def save_interval(total: int) -> int:
    """Default checkpoint period: about ten checkpoints a run, at most every 500 steps, so a
    short run has some before it ends (``save_minutes`` adds one every few minutes)."""
    return max(1, min(500, total // 10))


def save_training_checkpoint(out: Path, run_config: RunConfig, step: int, translator: Translator,
                             encoders: dict[str, Encoder], sampler: CropSampler) -> None:
    save_checkpoint(out, model_tensors(translator, encoders), {
        "step": step,
        **optimizer_state(translator),
        "translator": checked_extra_state(translator),
        "sampler": sampler.state_dict(),
        "rng": rng_state(),
    }, step)
    run_config.step = step
    write_json(out / CONFIG, run_config.to_json())


def checked_extra_state(translator: Translator) -> dict[str, Any]:
    """``translator.extra_state()``, refused with the translator's name when a resume could
    not load it back (``torch.load(weights_only=True)`` refuses most objects): saved, it would
    make the run unresumable. Checked by that very round trip, with every tensor replaced by
    an empty one (an image pool is tens of megabytes)."""
    state = translator.extra_state()
    buffer = io.BytesIO()
    try:
        torch.save(_without_tensor_data(state), buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- pickling and the loader raise many types
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # the loader's name for the object
        reason = f"it holds {found.group(1)}" if found else one_line(exc, limit=200)
        raise StyletxError(f"the {translator.name} translator's extra_state() could not be "
                           f"loaded back on resume ({reason}); keep it to tensors, numbers, "
                           f"strings and dicts or lists of them") from None
    return state


def _without_tensor_data(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty(0, dtype=value.dtype)
    if isinstance(value, dict):
        return {key: _without_tensor_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_without_tensor_data(item) for item in value)
    return value


def load_training_state(state: dict[str, Any], translator: Translator,
                        sampler: CropSampler) -> None:
    load_optimizer_state(translator, state)
    translator.load_extra_state(state["translator"])
    sampler.load_state_dict(state["sampler"])
    restore_rng(state["rng"])


def optimizer_state(translator: Translator) -> dict[str, dict[str, Any]]:
    """The state of every optimizer and scheduler, by name: {"optimizers": ..., "schedulers":
    ...}."""
    return {kind: {name: obj.state_dict() for name, obj in getattr(translator, kind).items()}
            for kind in ("optimizers", "schedulers")}


def load_optimizer_state(translator: Translator, state: dict[str, Any]) -> None:
    """The inverse of ``optimizer_state``, into the translator's current objects."""
    for kind in ("optimizers", "schedulers"):
        for name, obj in getattr(translator, kind).items():
            obj.load_state_dict(state[kind][name])
    for scheduler in translator.schedulers.values():
        _follow_the_schedule(scheduler)


def _follow_the_schedule(scheduler: Any) -> None:
    """Set the rates a LambdaLR's schedule gives at its step. The loaded optimizer holds the
    rate of the schedule it was saved under: after ``--steps`` was raised on a finished run
    that is 0, so the first added step would not train, and after a ``--minutes`` replan the
    next step would run at the old plan's rate. The same step under the same schedule gives
    the same float the scheduler's own step computed, so a plain resume stays bit-exact.
    Other schedulers (a plugin's, a LambdaLR subclass included) keep the rates they saved."""
    if type(scheduler) is not torch.optim.lr_scheduler.LambdaLR:
        return
    rates = [base * factor(scheduler.last_epoch)
             for factor, base in zip(scheduler.lr_lambdas, scheduler.base_lrs, strict=True)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(rate)
        else:
            group["lr"] = rate
    scheduler._last_lr = [group["lr"].clone() if isinstance(group["lr"], torch.Tensor)
                          else group["lr"] for group in scheduler.optimizer.param_groups]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
