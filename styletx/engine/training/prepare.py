"""A training command made ready for the loop: one ``Prepared`` for a new run and a resumed
one alike (the data read, the encoders fitted or loaded, the translator built, its checkpoint
state when resuming)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from styletx import __version__
from styletx.contract.errors import StyletxError, UsageError
from styletx.contract.files import WRITE_CHECK, check_output_folder, check_writable
from styletx.contract.interfaces import SIDES, Domain, Encoder, Translator
from styletx.contract.registry import Registry
from styletx.engine import distributed
from styletx.engine.data import FolderData, is_inside
from styletx.engine.model import (
    build_from_config,
    check_encoder_setting,
    encoded,
    encoder_record,
    encoder_with_settings,
    load_model_tensors,
    make_config,
    plugin_versions,
    versions_note,
)
from styletx.engine.progress import prefixed_messages
from styletx.engine.run_config import DataSource, RunConfig, TrainPlan
from styletx.engine.runs import (
    LOCK,
    PREVIOUS,
    WEIGHTS,
    has_checkpoint,
    is_run_folder,
    load_checkpoint,
    read_config,
)
from styletx.engine.training.inputs import (
    check_channels,
    check_encoder,
    check_folders,
    check_paired,
    guess_domain,
    load_data,
    refuse_too_short,
)
from styletx.engine.training.settings import (
    TrainResult,
    TrainSettings,
    check_balance_model,
    train_values,
)

log = logging.getLogger("styletx")


@dataclasses.dataclass
class Request:
    """What the command asked for (None: not given, the saved or default value applies)."""

    a_dir: Path | str
    b_dir: Path | str | None
    out: Path | str
    model: str | None = None
    preset: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    settings: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    domain: str | None = None
    encoder: str | None = None
    aligned: bool = False
    encoder_settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # --encoder-set


@dataclasses.dataclass
class Prepared:
    """A run ready to train, new or resumed."""

    out: Path
    run_config: RunConfig
    domain: Domain
    encoders: dict[str, Encoder]
    translator: Translator
    folders: dict[str, FolderData]
    resume_state: dict[str, Any] | None  # the checkpoint's training state; None: a new run


def prepare(request: Request, registry: Registry) -> Prepared | TrainResult:
    """The run ``request`` describes, made ready; a ``TrainResult`` when a saved run is already
    trained as far as asked."""
    a_dir, b_dir = check_folders(request.a_dir, request.b_dir, request.aligned)
    out = Path(request.out)
    for folder in (a_dir, b_dir):
        if folder and is_inside(out, folder):
            raise UsageError(f"--out {out} is inside the input folder {folder}; choose another")
    saved = saved_config(out)
    if saved is None:
        return _new_run(request, a_dir, b_dir, out, registry)
    given = _given(request, a_dir, b_dir)
    if _same_preset(registry, saved, request.preset):
        given["preset"] = saved.preset  # another name for the same settings: fast is default
    saved.check_resume(given, request.overrides, out)
    saved.check_encoder_settings(request.encoder_settings, out)
    return _resumed_run(saved, request.settings, out, registry)


def _same_preset(registry: Registry, saved: RunConfig, name: str | None) -> bool:
    """Is preset ``name`` the saved run's preset under another name (the same settings)?"""
    if name is None or saved.translator not in registry.translators:
        return False
    presets = registry.translator(saved.translator).presets_for(saved.domain)
    mine, theirs = presets.get(name), presets.get(saved.preset)
    return (mine is not None and theirs is not None
            and (mine.config, mine.train) == (theirs.config, theirs.train))


def saved_config(out: Path) -> RunConfig | None:
    """The config of a resumable run in ``out``; None for a new (or never saved) run."""
    check_output_folder(out, "--out")
    if not out.exists():
        return None
    if is_run_folder(out):
        if has_checkpoint(out):
            return RunConfig.read(out)
        _refuse_lost_weights(out)
        return None  # the first save was cut short: nothing to resume
    if any(p.name != LOCK and WRITE_CHECK not in p.name  # the lock: see holds_run_lock;
           for p in out.iterdir()):  # the write check: rank 0's, at this moment
        raise UsageError(f"--out {out}: folder exists, is not empty and is not a styletx run")
    return None


def _check_writable(out: Path) -> None:
    """``check_writable`` by the one process that writes the run (torchrun's rank 0: its
    processes' probes of one file raced, and the others saw rank 0's as a stranger's file)."""
    if distributed.rank_from_environment() == 0:
        check_writable(out, "--out")


def _refuse_lost_weights(out: Path) -> None:
    """A run whose config.json records a saved step but whose weights are gone (deleted, or
    lost with the disk) and have no earlier copy in .previous/: starting over would overwrite
    its resume state and log without a word."""
    try:
        step = int(read_config(out).get("step") or 0)
    except (StyletxError, TypeError, ValueError):
        return  # a config that cannot be read records no step either
    if step > 0:
        raise StyletxError(f"{out / WEIGHTS}: the weights file is missing and no earlier "
                           f"checkpoint is in {PREVIOUS}/, so the run's step {step} cannot be "
                           "resumed; restore the file, or train into a new --out")


def _given(request: Request, a_dir: Path, b_dir: Path | None) -> dict[str, Any]:
    """The command's values by RunConfig field, for ``RunConfig.check_resume``."""
    settings = request.settings
    return {
        "translator": request.model, "preset": request.preset, "domain": request.domain,
        "encoders": request.encoder,
        "data.a": str(a_dir), "data.b": b_dir and str(b_dir), "data.aligned": b_dir is None,
        "train.size": settings.size, "train.batch_size": settings.batch_size,
        # the default seed cannot be told from an explicit --seed 0: only another one is checked
        "train.seed": None if settings.seed == TrainSettings.seed else settings.seed,
    }


def _new_run(request: Request, a_dir: Path, b_dir: Path | None, out: Path,
             registry: Registry) -> Prepared:
    if request.model:  # a mistyped or unloaded name before the folders are scanned
        registry.translator(request.model)
    if request.encoder:
        registry.encoder(request.encoder)
    dom = (registry.domain(request.domain) if request.domain
           else guess_domain(registry, a_dir, b_dir))
    cls = registry.translator(request.model or _loaded(registry.translators,
                                                       dom.default_translator, dom, "--model"))
    check_balance_model(cls, request.settings)  # these before the files are read
    if request.encoder:
        check_encoder(registry.encoder(request.encoder), dom)
    _check_encoder_settings(registry, request, dom)
    check_paired(cls, request.aligned)
    preset = request.preset or "default"
    make_config(cls, preset, request.overrides, dom.name)  # a mistyped --set before reading
    plan = TrainPlan(**train_values(cls.presets_for(dom.name)[preset], request.settings),
                     seed=request.settings.seed)
    _check_writable(out)
    folders = load_data(dom, a_dir, b_dir, out, plan.size, cls.paired, request.settings)
    config = _config_for_files(cls, preset, request.overrides, dom.name, folders)
    crop = dom.training_crop(plan.size)
    encoders = _fitted_encoders(registry, request, dom, folders, crop[1], cls.paired)
    shapes = {side: tuple(encoded(enc, folders[side].samples[0], folders[side].files[0]).shape)
              for side, enc in encoders.items()}
    config = cls.config_for_data(config, shapes, crop)
    run_config = RunConfig(
        translator=cls.name, preset=preset, domain=dom.name,
        config=dataclasses.asdict(config),
        encoders={side: encoder_record(enc) for side, enc in encoders.items()},
        data=DataSource(str(a_dir), b_dir and str(b_dir), request.aligned), train=plan,
        shapes={side: list(shape) for side, shape in shapes.items()},
        styletx_version=__version__)
    run_config.plugins = plugin_versions(run_config, registry)
    torch.manual_seed(plan.seed)  # weight initialisation
    translator = cls(config, encoders["a"].channels, encoders["b"].channels)
    return Prepared(out, run_config, dom, encoders, translator, folders, None)


def _config_for_files(cls: type[Translator], preset: str, overrides: dict[str, Any],
                      domain: str, folders: dict[str, FolderData]) -> Any:
    """The Config again, now that the number of files is known (``Preset.for_files``); the
    values that depend on it are logged, as they are not the preset's description's."""
    files = min(len(data.files) for data in folders.values())
    chosen = cls.presets_for(domain)[preset]
    config = make_config(cls, preset, overrides, domain, files=files)
    by_data = {k: v for k, v in chosen.by_files(files).items() if k not in overrides}
    if by_data:
        log.info("%s preset with %d file(s) on the smaller side: %s", preset, files,
                 ", ".join(f"{k}={v}" for k, v in by_data.items()))
    return config


def _loaded(table: dict[str, type], name: str, dom: Domain, option: str) -> str:
    """The domain's default ``name``, which a plugin must have registered."""
    if name not in table:
        raise StyletxError(f"the {dom.name} domain's default {option[2:]} {name!r} is not "
                           f"loaded (a plugin that failed to load, or a mistake in the domain); "
                           f"choose one with {option}")
    return name


def _check_encoder_settings(registry: Registry, request: Request, dom: Domain) -> None:
    """A mistyped ``--encoder-set`` before the files are read: against the encoder asked for,
    else against the domain's encoders that have the setting (the domain's choice depends on
    the files; the chosen one's check follows when it is built)."""
    settings = request.encoder_settings
    candidates = ([registry.encoder(request.encoder)] if request.encoder
                  else _of_domain(registry, dom.name))
    for key, value in settings.items():
        having = [cls for cls in candidates if key in cls.defaults]
        if not having and len(candidates) != 1:
            raise UsageError(f"--encoder-set {key}: no {dom.name} encoder has such a setting "
                             "(`styletx plugins` lists each encoder's)")
        check_encoder_setting((having or candidates)[0], key, value)
    taking = _taking(candidates, settings)
    if settings and taking:
        taking[0](**settings)  # the values together (say, n_fft >= hop)


def _of_domain(registry: Registry, domain: str) -> list[type[Encoder]]:
    return [cls for cls in registry.encoders.values() if cls.domain == domain]


def _taking(classes: list[type[Encoder]], settings: dict[str, Any]) -> list[type[Encoder]]:
    """Those of ``classes`` that have every one of ``settings``."""
    return [cls for cls in classes if set(settings) <= set(cls.defaults)]


def _encoder_with_settings(registry: Registry, cls: type[Encoder],
                           settings: dict[str, Any]) -> Encoder:
    """``encoder_with_settings``; a setting the chosen encoder lacks names the domain's
    encoder that takes them (the world encoder's frame_period, given without --encoder)."""
    try:
        return encoder_with_settings(cls, settings)
    except UsageError as exc:
        takers = [other for other in _taking(_of_domain(registry, cls.domain), settings)
                  if other is not cls]
        if not takers or _taking([cls], settings):
            raise
        raise UsageError(f"{exc}; --encoder {takers[0].name} takes it") from None


def _fitted_encoders(registry: Registry, request: Request, dom: Domain,
                     folders: dict[str, FolderData], width: int,
                     paired: bool) -> dict[str, Encoder]:
    """One encoder per side (``--encoder``, else the domain's choice, with the
    ``--encoder-set`` values), fitted on that side once it is known that the folders' encoded
    files are not all narrower than ``width``."""
    name = request.encoder
    encoders = {side: _encoder_with_settings(registry, registry.encoder(name or _loaded(
                    registry.encoders, _default_encoder(dom, folders[side].samples), dom,
                    "--encoder")), request.encoder_settings)
                for side in SIDES}
    for enc in encoders.values():
        check_encoder(enc, dom, by_default=name is None)
    refuse_too_short(folders, encoders, width, paired)
    for side, enc in encoders.items():
        with prefixed_messages(f"{side.upper()}: "):  # "A: mel decoder: step 400/2000 ..."
            enc.fit(folders[side].samples)
        check_channels(enc)  # (fit may set it)
    return encoders


def _default_encoder(dom: Domain, samples: list) -> str:
    try:
        return dom.default_encoder(samples)
    except NotImplementedError:
        raise StyletxError(f"the {dom.name} domain chooses no encoder (it does not implement "
                           f"default_encoder); give one with --encoder") from None


def _resumed_run(saved: RunConfig, settings: TrainSettings, out: Path,
                 registry: Registry) -> Prepared | TrainResult:
    if settings.steps is not None:
        saved.train.steps = settings.steps
    dom, encoders, translator = build_from_config(saved, registry)
    check_balance_model(type(translator), settings)
    tensors, state = load_checkpoint(out)
    load_model_tensors(translator, encoders, tensors, run=out,
                       note=versions_note(saved, registry))
    saved.step = state["step"]
    if saved.step >= saved.train.steps:
        log.info("%s is already trained to step %d%s; raise --steps to continue", out,
                 saved.step, f" of {saved.train.steps}" if saved.step == saved.train.steps
                 else f", past the {saved.train.steps} asked")
        if not translator.trained_outputs_missing(out):
            return TrainResult(out, saved.step, {}, planned=saved.train.steps)
        # e.g. a Ctrl-C while latent.json was written: the loop takes no step and writes them
        log.info("%s: what the %s model writes after training is missing; writing it",
                 out, translator.name)
    data = saved.data
    _check_writable(out)
    folders = load_data(dom, Path(data.a), data.b and Path(data.b), out, saved.train.size,
                        translator.paired, settings)
    log.info("resuming %s from step %d", out, saved.step)
    return Prepared(out, saved, dom, encoders, translator, folders, state)
