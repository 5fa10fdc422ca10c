"""What a training command asks for (``TrainSettings``) and what it returns."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from styletx.contract.errors import StyletxError, UsageError
from styletx.contract.interfaces import Preset

# Used when neither the user nor the preset says otherwise.
TRAIN_DEFAULTS = {"steps": 10_000, "batch_size": 1, "size": 256}


@dataclasses.dataclass
class TrainSettings:
    steps: int | None = None  # total optimisation steps (None: the preset's)
    batch_size: int | None = None  # examples per step (None: the preset's)
    size: int | None = None  # training crop in pixels / frames (None: the preset's)
    seed: int = 0  # weights init, data order, crops, image pool
    device: str = "auto"  # auto = CUDA when available, else CPU
    amp: bool = True  # bf16 autocast for forward passes on CUDA (ignored on CPU)
    minutes: float | None = None  # wall-clock budget for this command: a new run without
    #                               `steps` times its first steps and plans as many as fit (the
    #                               lr schedule included); any run stops and saves when it is spent
    save_every: int | None = None  # checkpoint period in steps (and always at the end); None:
    #                                a tenth of the run, at most 500
    save_minutes: float = 5.0  # also checkpoint when this long has passed since the last one
    log_every: int = 25  # log.jsonl period in steps
    preview_every: int | None = None  # samples/ grid period in steps (and at the end); None:
    #                                   as save_every
    progress: bool = True  # progress bar on a terminal
    log_to: str | None = None  # "tensorboard": also write the log and previews as TensorBoard
    #                            events in RUN/tensorboard/ (needs the tensorboard package)
    balance: bool = False  # latent models: draw rare kinds of example more often
    balance_by: str = "elbo"  # how rarity is estimated: "elbo" (the model's own negative ELBO)
    #                           or "latent" (DB-VAE's histograms of the pooled latent)
    balance_every: int = 100  # steps between re-estimates of the sampling weights
    balance_smoothing: float = 0.001  # added to each latent histogram's density; larger values
    #                                   move the sampling towards uniform
    balance_share: float = 1.0  # share of the draws that follow the weights; the rest uniform
    balance_min_effective: float = 0.5  # the weights are flattened until at least this share
    #                                     of the examples is effectively drawn
    channels_last: bool = False  # channels-last memory format for the networks and batches
    compile: bool = False  # run the generators through torch.compile
    compile_mode: str = "auto"  # torch.compile's mode; auto: COMPILE_MODE_ON_CUDA on CUDA,
    #                             "default" elsewhere
    cudnn_autotune: bool = True  # CUDA: let cuDNN time its algorithms for the (fixed) crop
    prefetch: int | None = None  # batches drawn ahead in a background thread (pinned for the
    #                              GPU); None: 2 on CUDA, 0 on CPU
    workers: int | None = None  # threads reading the training files; None: one per CPU
    #                             core (shared by the processes on this machine), at most 8
    started: float | None = dataclasses.field(default=None, repr=False)  # when the command
    #                        began: `minutes` counts from here (None: from the train() call)


class TrainingInterrupted(StyletxError):
    exit_code = 130


@dataclasses.dataclass
class TrainResult:
    run: Path
    step: int
    losses: dict[str, float]


def started_now(settings: TrainSettings) -> TrainSettings:
    """``settings`` checked, with the clock of ``minutes`` started (unless the caller started it
    already): a TrainSettings made long before train(), or used for a second run, gave a run of
    one step, its budget spent before it began."""
    if settings.minutes is not None and not 0 < settings.minutes < math.inf:
        raise UsageError(f"--minutes must be a number above 0 (got {settings.minutes})")
    if settings.started is not None:
        return settings
    return dataclasses.replace(settings, started=time.monotonic())


def train_values(preset: Preset, settings: TrainSettings) -> dict[str, int]:
    values = {**TRAIN_DEFAULTS, **preset.train}
    for key in TRAIN_DEFAULTS:
        if getattr(settings, key) is not None:
            values[key] = getattr(settings, key)
    option = {"steps": "--steps", "batch_size": "--batch-size", "size": "--size"}
    for key, value in values.items():
        if value < 1:
            raise UsageError(f"{option[key]} must be at least 1 (got {value})")
    return values
