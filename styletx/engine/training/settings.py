"""What a training command asks for (``TrainSettings``) and what it returns."""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import time
from pathlib import Path
from typing import Any

from styletx.contract.errors import UsageError
from styletx.contract.interfaces import LatentTranslator, Preset, Translator
from styletx.engine.balance import BALANCE_BY

log = logging.getLogger("styletx")

# Used when neither the user nor the preset says otherwise.
TRAIN_DEFAULTS = {"steps": 10_000, "batch_size": 1, "size": 256}  # PRESET_TRAIN_KEYS


@dataclasses.dataclass
class TrainSettings:
    """How one ``train()`` call trains. Most fields are the ``styletx train`` option of their
    name (``batch_size`` is ``--batch-size``, ``log_to`` is ``--log``; ``styletx train --help``
    describes them); None takes the preset's or the run's value. ``save_minutes``,
    ``progress`` and ``cudnn_autotune`` have no option; each field's comment says what it
    does."""

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


BALANCE_SETTINGS = ("balance_by", "balance_every", "balance_smoothing", "balance_share",
                    "balance_min_effective")


def check_balance_settings(settings: TrainSettings) -> None:
    """The --balance options' values, and none of them without --balance (before any file is
    read)."""
    given = {name: getattr(settings, name) for name in BALANCE_SETTINGS
             if getattr(settings, name) != getattr(TrainSettings, name)}
    if given and not settings.balance:
        raise UsageError(f"{_options(given)} set(s) how --balance draws; add --balance")
    if not 0 <= settings.balance_smoothing < math.inf:  # NaN compares false, so is refused
        raise UsageError(f"--balance-smoothing must be a number >= 0 (got "
                         f"{settings.balance_smoothing})")
    if not 0 <= settings.balance_share <= 1:
        raise UsageError(f"--balance-share must be between 0 and 1 (got "
                         f"{settings.balance_share})")
    if settings.balance_by not in BALANCE_BY:
        raise UsageError(f"--balance-by must be one of {', '.join(BALANCE_BY)} (got "
                         f"{settings.balance_by!r})")
    if not 0 <= settings.balance_min_effective <= 1:
        raise UsageError(f"--balance-min-effective must be between 0 and 1 (got "
                         f"{settings.balance_min_effective})")
    if settings.balance_by == "elbo" and settings.balance_min_effective == 0:
        raise UsageError("--balance-by elbo needs --balance-min-effective above 0: it sets "
                         "how strongly the draws favour rare examples")
    if settings.balance and settings.balance_share == 0:  # a control arm in the benchmarks
        log.warning("--balance-share 0: every batch is drawn uniformly, so --balance changes "
                    "nothing but the log lines")


def check_balance_model(translator: type[Translator], settings: TrainSettings) -> None:
    if settings.balance and not issubclass(translator, LatentTranslator):
        raise UsageError(f"--balance needs a model with a latent space (vaegan), not "
                         f"{translator.name}")


def balance_record(settings: TrainSettings) -> dict[str, Any] | None:
    """What config.json keeps of ``--balance`` (None: not balanced)."""
    return ({name: getattr(settings, name) for name in BALANCE_SETTINGS} if settings.balance
            else None)


def balance_as_saved(settings: TrainSettings, saved: dict[str, Any] | None,
                     run: Path | str) -> TrainSettings:
    """The command's settings, balanced as the run was when the command does not say
    ``--balance`` (a resume would silently draw uniformly); refused when it says ``--balance``
    with other settings."""
    if saved is None:
        return settings  # not balanced so far (or a run from before it was saved): as asked
    saved = {k: v for k, v in saved.items() if k in BALANCE_SETTINGS}
    if not settings.balance:
        log.info("resuming with the run's --balance (%s)",
                 ", ".join(f"{k.replace('_', '-')} {v}" for k, v in saved.items()))
        return dataclasses.replace(settings, balance=True, **saved)
    differing = {k: v for k, v in saved.items() if getattr(settings, k) != v}
    if differing:
        now = ", ".join(f"{getattr(settings, k)}" for k in differing)
        raise UsageError(f"{run} was trained with {_options(differing)} "
                         f"{', '.join(map(str, differing.values()))}, not {now}; use the same "
                         "options to resume, or a new --out")
    return settings


def _options(values: dict[str, Any]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in values)


@dataclasses.dataclass
class TrainResult:
    """What ``train()`` left: the run folder, the step its last checkpoint holds, the losses of
    the last step this call took (the log's lines show means; {} when it took none), and the
    steps the run plans (``finished``: all of them taken; a ``minutes`` budget spent before
    them leaves it False, and the same call again trains the rest)."""

    run: Path
    step: int
    losses: dict[str, float]
    planned: int | None = None  # None: not known (a TrainResult made by older code)

    @property
    def finished(self) -> bool:
        return self.planned is not None and self.step >= self.planned


# The settings whose values the CLI's option types check, checked alike for a Python caller
# (whose steps=10.5 trained 11 steps, and log_every=0 failed after the first step):
# field: (its option, the least value; None: any), and which may be None (the preset's)
WHOLE_NUMBERS = {"steps": ("--steps", 1), "batch_size": ("--batch-size", 1),
                 "size": ("--size", 1), "seed": ("--seed", -(2**63)),
                 "save_every": ("--save-every", 1), "preview_every": ("--preview-every", 1),
                 "log_every": ("--log-every", 1), "prefetch": ("--prefetch", 0),
                 "workers": ("--workers", 0), "balance_every": ("--balance-every", 1)}
# the most a field may be: a mistyped --steps 99999999999999999999 trained "forever" (its
# ETA 794153112149543 hours); torch's seed is a 64-bit integer (a larger one: a traceback)
MOST = {"steps": 10**9, "seed": 2**63 - 1}
OPTIONAL = {"steps", "batch_size", "size", "save_every", "preview_every", "prefetch", "workers",
            "minutes"}
POSITIVE_NUMBERS = {"minutes": "--minutes", "save_minutes": "save_minutes"}  # the latter: Python's
UNBOUNDED = {"save_minutes"}  # inf allowed: no timed checkpoints


def checked_settings(settings: Any) -> TrainSettings:
    """``train()``'s ``settings`` (a TrainSettings, or a dict of its fields) with every number
    of the right kind and range, or a UsageError naming the option as the CLI would."""
    settings = _as_settings(settings)
    plain = {}  # numpy's numbers as Python's: config.json is written with the json module
    for field, (option, least) in WHOLE_NUMBERS.items():
        value = getattr(settings, field)
        if value is None and field in OPTIONAL:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise UsageError(f"{option} must be a whole number (got {value!r})")
        if least is not None and value < least:
            raise UsageError(f"{option} must be at least {least} (got {value})")
        if value > MOST.get(field, value):
            raise UsageError(f"{option} must be at most {MOST[field]:,} (got {value:,})")
        plain[field] = int(value)
    for field, option in POSITIVE_NUMBERS.items():
        value = getattr(settings, field)
        if value is None and field in OPTIONAL:
            continue
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not value > 0  # NaN compares false, so is refused
                or not (math.isfinite(value) or field in UNBOUNDED)):
            raise UsageError(f"{option} must be a number above 0 (got {value!r})")
        plain[field] = float(value)
    return dataclasses.replace(settings, **plain)


def _as_settings(settings: Any) -> TrainSettings:
    if isinstance(settings, dict):
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TrainSettings)})
        if unknown:
            raise UsageError(f"settings: TrainSettings has no {', '.join(map(repr, unknown))}")
        settings = TrainSettings(**settings)
    if not isinstance(settings, TrainSettings):
        raise UsageError(f"settings must be a TrainSettings, not a {type(settings).__name__}")
    return settings


def started_now(settings: TrainSettings) -> TrainSettings:
    """``settings`` checked, with the clock of ``minutes`` started (unless the caller started it
    already): a TrainSettings made long before train(), or used for a second run, gave a run of
    one step, its budget spent before it began."""
    settings = checked_settings(settings)
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
