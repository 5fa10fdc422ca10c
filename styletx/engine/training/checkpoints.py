"""Checkpoints of a training run: everything a bit-exact resume needs (weights, optimizers,
schedulers, the translator's extra state such as image pools, the data order, the RNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from styletx.contract.errors import StyletxError
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


SAVABLE = (torch.Tensor, int, float, str, bool, type(None))  # what a resume may load back


def checked_extra_state(translator: Translator) -> dict[str, Any]:
    """``translator.extra_state()``, refused with the translator's name when it holds what a
    resume cannot load (``torch.load(weights_only=True)``): saved, it would make the run
    unresumable."""
    state = translator.extra_state()

    def check(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                check(key, where)
                check(item, f"{where}[{key!r}]")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                check(item, f"{where}[{i}]")
        elif not isinstance(value, SAVABLE):
            raise StyletxError(
                f"the {translator.name} translator's {where} is a {type(value).__name__}: a "
                f"checkpoint holds only tensors, numbers, strings and dicts or lists of them "
                f"(a resume could not load it back)")

    check(state, "extra_state()")
    return state


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


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
