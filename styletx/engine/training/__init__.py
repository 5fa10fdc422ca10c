"""Training: from two folders to a run folder, with resume.

    train("photos/summer", "photos/winter", "runs/s2w", model="cyclegan", preset="fast",
          settings=TrainSettings(minutes=10))

The package's modules, in the order a run goes through them:

settings      what a command asks for (``TrainSettings``) and what it returns
inputs        checking the folders, reading and pairing the files, encoding them
prepare       a new run and a resumed one made into one ``Prepared`` (checked against the saved
              ``RunConfig`` when resuming)
budget        ``--minutes``: the steps that fit, the revision of that plan, time's end
loop          the loop: steps, logs, previews, checkpoints, how it ended
checkpoints   what a bit-exact resume needs, saved and restored
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from styletx.contract.errors import TrainingInterrupted
from styletx.contract.registry import Registry, get_registry
from styletx.engine.runs import holds_run_lock
from styletx.engine.training import loop
from styletx.engine.training.prepare import Request, prepare
from styletx.engine.training.settings import (
    TrainResult,
    TrainSettings,
    balance_as_saved,
    balance_record,
    check_balance_settings,
    started_now,
)

__all__ = ["TrainResult", "TrainSettings", "TrainingInterrupted", "train"]


@contextlib.contextmanager
def _callers_random_state() -> Iterator[None]:
    """Training seeds torch's generators (weights, data order) and a resume restores their
    saved states: put the caller's back, so their own random numbers go on as if train() had
    drawn none. CUDA's only where the caller already started CUDA (starting it here would
    make a context on every GPU, under torchrun in every process)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)


@holds_run_lock  # one trainer per run folder
def train(
    a_dir: Path | str,
    b_dir: Path | str | None,
    out: Path | str,
    model: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    settings: TrainSettings | dict[str, Any] | None = None,
    domain: str | None = None,
    encoder: str | None = None,
    registry: Registry | None = None,
    aligned: bool = False,
    encoder_settings: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` to map the files of ``a_dir`` to the style of ``b_dir`` into ``out``.

    ``model`` defaults to the domain's choice (cyclegan for images, match for voices) and
    ``preset`` to default; when ``out`` already holds a run, training resumes and both default
    to the saved ones. ``settings.minutes`` counts from this call. Torch's global random state
    is the caller's again afterwards (training seeds it with ``settings.seed``). A paired model
    (pix2pix) pairs the files of the two folders by name; with ``aligned`` it reads pairs side
    by side from the files of ``a_dir`` alone (``b_dir`` None). ``settings`` may be a dict of
    TrainSettings' fields. ``encoder_settings`` change the encoder's (both sides') settings,
    e.g. ``{"n_mels": 80}`` (``Encoder.defaults`` lists them; a new run only).
    """
    settings = started_now(settings or TrainSettings())
    check_balance_settings(settings)
    request = Request(a_dir, b_dir, out, model, preset, overrides or {}, settings, domain,
                      encoder, aligned, encoder_settings or {})
    with _callers_random_state():
        prepared = prepare(request, registry or get_registry())
        if isinstance(prepared, TrainResult):  # already trained as far as asked
            return prepared
        plan = prepared.run_config.train
        settings = balance_as_saved(settings, plan.balance, prepared.out)
        plan.balance = balance_record(settings)
        return loop.run(prepared, settings)
