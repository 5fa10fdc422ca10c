"""A run's configuration (``config.json``), typed: what was trained, on which data, and how.

This module owns the file's format. Training writes it, and conversion, evaluation, export and
the latent tools read it, always through ``RunConfig``. Each field says on itself which command
line option sets it and whether a resumed run may change it (``on_resume``): ``train`` checks
a resumed run with ``RunConfig.check_resume`` instead of a table of its own.

The JSON keeps the layout of runs written before this class existed, so they load and resume
unchanged; keys this version does not know are kept and written back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from styletx.contract.errors import StyletxError, UsageError
from styletx.engine.runs import CONFIG, read_config

FIXED, MAY_CHANGE = "fixed", "may change"


def option(name: str, on_resume: str = FIXED, saved: Callable[[Any], Any] | None = None,
           **field_args) -> Any:
    """A field set by the command line option ``name``. ``on_resume``: FIXED (a resumed run
    must be given the saved value or none) or MAY_CHANGE. ``saved``: what of the field the
    option is compared with (default: the field's value)."""
    return dataclasses.field(metadata={"option": name, "on_resume": on_resume, "saved": saved},
                             **field_args)


@dataclasses.dataclass
class DataSource:
    a: str = option("A_DIR")
    b: str | None = option("B_DIR")  # None with --aligned: the pairs are side by side in A
    aligned: bool = option("--aligned", default=False)


@dataclasses.dataclass
class TrainPlan:
    steps: int = option("--steps", MAY_CHANGE)  # the run's length: a resume may extend it
    batch_size: int = option("--batch-size")
    size: int = option("--size")  # training crop in pixels (images) or frames (audio)
    seed: int = option("--seed", default=0)
    # --balance and its settings (balance_by, balance_every, ...), None without: a resume
    # without --balance goes on with them (checked in styletx.engine.training.settings)
    balance: dict[str, Any] | None = None


@dataclasses.dataclass
class RunConfig:
    translator: str = option("--model")
    preset: str = option("--preset")
    domain: str = option("--domain")
    # the translator's Config as a dict; each key can only be the saved one (``--set KEY=...``)
    config: dict[str, Any] = option("--set")
    # per side: {"name", "params", "channels"} of the fitted encoder
    encoders: dict[str, dict[str, Any]] = option("--encoder",
                                                 saved=lambda records: records["a"]["name"])
    data: DataSource
    train: TrainPlan
    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # encoded, per side
    step: int = 0  # the step of the checkpoint beside it
    styletx_version: str = ""
    plugins: dict[str, str] = dataclasses.field(default_factory=dict)  # third-party: version
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # unknown keys, kept

    # -- the file ------------------------------------------------------------------------------
    @classmethod
    def read(cls, run: Path) -> RunConfig:
        """The config of the run folder ``run`` (a one-line error when it is none, or damaged)."""
        raw = read_config(run)
        try:
            return cls.from_json(raw)
        except (TypeError, AttributeError, KeyError) as exc:  # a field missing or of the wrong
            #                                                   kind, e.g. "data": null
            raise StyletxError(f"{run / CONFIG}: unreadable run config ({exc})") from None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunConfig:
        """From config.json's dict (already checked to hold the required keys)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in raw.items() if k in known}
        values["data"] = DataSource(**_known(DataSource, raw["data"]))
        values["train"] = TrainPlan(**_known(TrainPlan, raw["train"]))
        return cls(**values, extra={k: v for k, v in raw.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        version, extra = raw.pop("styletx_version"), raw.pop("extra")
        return {"styletx_version": version, **raw, **extra}

    def encoded_height(self, side: str) -> int | None:
        """H of ``side``'s encoded examples as training saw them (audio: the frequency bins);
        None for runs written before config.json recorded it."""
        shape = self.shapes.get(side)
        return None if shape is None else int(shape[1])

    # -- resuming ------------------------------------------------------------------------------
    def check_resume(self, given: dict[str, Any], overrides: dict[str, Any],
                     run: Path | str = "the run folder") -> None:
        """Refuse options that contradict the saved run ``run``. ``given``: field path
        ("preset", "train.size", ...) -> the value the command gave (None: not given);
        ``overrides``: the ``--set`` values."""
        for path, field, saved in self._fields():
            now = given.get(path)
            if field.metadata["on_resume"] != FIXED or now is None or field.name == "config":
                continue
            before = field.metadata["saved"](saved) if field.metadata["saved"] else saved
            if now != before:
                _refuse(run, field.metadata["option"], before, now)
        for key, now in overrides.items():
            if now != self.config.get(key):  # the saved value may be the preset's, not a --set's
                raise UsageError(f"{run} was trained with {key}={self.config.get(key)}, not the "
                                 f"--set {key}={now}; leave it out to resume, or use a new --out")

    def check_encoder_settings(self, settings: dict[str, Any],
                               run: Path | str = "the run folder") -> None:
        """Refuse ``--encoder-set`` values other than the saved encoders' (the spectrograms
        the model learnt would change under it)."""
        for key, now in settings.items():
            for record in self.encoders.values():
                name, params = record["name"], record["params"]
                if key not in params:
                    raise UsageError(f"--encoder-set {key}: the {name} encoder {run} was "
                                     f"trained with has no such setting; leave it out to resume")
                if params[key] != now:
                    raise UsageError(f"{run} was trained with the {name} encoder's "
                                     f"{key}={params[key]}, not the --encoder-set {key}={now}; "
                                     "leave it out to resume, or use a new --out")

    def _fields(self):
        """(path, field, value) of every field with an option, nested ones included."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if dataclasses.is_dataclass(value):
                for inner in dataclasses.fields(value):
                    if "option" in inner.metadata:
                        yield f"{field.name}.{inner.name}", inner, getattr(value, inner.name)
            elif "option" in field.metadata:
                yield field.name, field, value


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def _refuse(run: Path | str, option_name: str, before: Any, now: Any) -> None:
    raise UsageError(f"{run} was trained with {option_name} {before}, not {now}; use the same "
                     "options to resume, or a new --out")
