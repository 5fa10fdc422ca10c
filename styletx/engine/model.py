"""Building a model (domain, encoders, translator) from names and settings, and its state.

The same functions serve a new training run, a resumed one and conversion, so a run folder's
``config.json`` is always enough to rebuild exactly the trained model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from styletx.contract.errors import StyletxError, UsageError, one_line
from styletx.contract.interfaces import SIDES, Domain, Encoder, Translator
from styletx.contract.registry import Registry
from styletx.engine.run_config import RunConfig
from styletx.engine.runs import CONFIG, WEIGHTS, split_prefix


def make_config(
    cls: type[Translator], preset: str, overrides: dict[str, Any], domain: str,
    files: int | None = None,
) -> Any:
    """The translator's Config with the preset's values (for this domain and, once the folders
    are read, for ``files`` files a side), then the user's overrides, applied."""
    presets = cls.presets_for(domain)
    if not presets:
        raise UsageError(f"the {cls.name} model does not work on {domain} files")
    if preset not in presets:
        raise UsageError(
            f"unknown --preset {preset!r} for {cls.name} on {domain} files "
            f"(available: {', '.join(presets)})"
        )
    values = {**presets[preset].config_for(files), **overrides}
    if not dataclasses.is_dataclass(cls.Config):
        raise StyletxError(f"the {cls.name} translator's Config must be a dataclass "
                           f"(@dataclasses.dataclass), not {cls.Config!r}")
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(
            f"unknown setting {unknown[0]!r} for {cls.name} (settings: {', '.join(fields)})"
        )
    for key, value in overrides.items():
        check_setting_type(cls, key, value, fields[key])
    return cls.Config(**values)


def check_setting_type(cls: type[Translator], key: str, value: Any,
                       field: dataclasses.Field) -> None:
    """Refuse ``--set ngf=abc`` with a clear message instead of failing deep in the model."""
    default = field.default
    if default is dataclasses.MISSING or default is None:
        return
    expected = (int, float) if type(default) is float else type(default)
    if isinstance(value, bool) and not isinstance(default, bool) or not isinstance(value, expected):
        raise UsageError(
            f"--set {key}={value!r}: {cls.name} expects {type(default).__name__} "
            f"(default {default!r})"
        )


def parse_settings(items: tuple[str, ...], option: str = "--set") -> dict[str, Any]:
    """``("ngf=32", "upsample=resize")`` -> ``{"ngf": 32, "upsample": "resize"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value  # a bare string such as resize
    return out


def encoded(encoder: Encoder, sample: Any, path: Path | None = None) -> torch.Tensor:
    """``encoder.encode(sample)``, checked to be a floating-point ``(C, H, W)`` tensor of its
    ``channels``, every value finite (a plugin's mistake here failed deep in conversion, or
    was called training that diverged); the error names ``path``, the sample's file, if given."""
    where = f"{path}: " if path is not None else ""
    x = encoder.encode(sample)
    if not (isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[0] == encoder.channels
            and x.is_floating_point()):
        got = (f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
               if isinstance(x, torch.Tensor) else type(x).__name__)
        raise StyletxError(f"{where}the {encoder.name} encoder's encode gave {got}, not a "
                           f"floating-point tensor (C, H, W) of its {encoder.channels} channels")
    if not torch.isfinite(x).all():
        raise StyletxError(f"{where}the {encoder.name} encoder's encode gave NaN or infinite "
                           "values")
    return x


def translated_values_problem(y: torch.Tensor) -> str | None:
    """What is wrong with the values ``translate`` gave, if anything: integers (a plugin's
    cast; they convert to a flat picture without a word) or NaN or infinite values."""
    if not y.is_floating_point():
        return f"{str(y.dtype).removeprefix('torch.')} values, not floating-point ones"
    if not torch.isfinite(y).all():
        return "NaN or infinite values"
    return None


def encoder_with_settings(cls: type[Encoder], settings: dict[str, Any]) -> Encoder:
    """``cls`` built with the command's ``--encoder-set`` values, each checked against the
    settings the encoder declares (``Encoder.defaults``: the name, and the kind of value)."""
    for key, value in settings.items():
        check_encoder_setting(cls, key, value)
    return cls(**settings)


def check_encoder_setting(cls: type[Encoder], key: str, value: Any) -> None:
    known = cls.defaults
    if key not in known:
        raise UsageError(f"--encoder-set {key}: the {cls.name} encoder has no such setting "
                         + (f"(its settings: {', '.join(known)})" if known else
                            "(it takes none)"))
    default = known[key]
    if not _same_kind(value, default):
        raise UsageError(f"--encoder-set {key}={json.dumps(value)}: the {cls.name} encoder's "
                         f"{key} is {_kind(default)} (default {json.dumps(default)})")


def _same_kind(value: Any, default: Any) -> bool:
    """A setting's value is of its default's kind: a whole number where the default is one, a
    number where it is a float (or None: "not set", e.g. fmax), else the same type."""
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float) or default is None:
        return isinstance(value, int | float) or (default is None and value is None)
    return isinstance(value, type(default))


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "a whole number"
    if isinstance(default, float) or default is None:
        return "a number"
    return f"a {type(default).__name__}"


def encoder_record(encoder: Encoder) -> dict[str, Any]:
    """How config.json records ``encoder``: its params must be JSON values (rebuilt from them)."""
    try:
        json.dumps(encoder.params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StyletxError(f"the {encoder.name} encoder's params must be JSON values (config."
                           f"json rebuilds it from them): {one_line(exc, type_name=False)}"
                           ) from None
    return {"name": encoder.name, "params": encoder.params, "channels": encoder.channels}


def build_from_config(config: RunConfig, registry: Registry):
    """(domain, {side: encoder}, translator) described by a run's config."""
    missing = _missing_plugins(config, registry)
    if missing:
        failed = registry.failed_note(lead=" (")
        raise StyletxError(f"this run needs {missing}, which no loaded plugin provides"
                           + (f"{failed})" if failed else ""))
    domain: Domain = registry.domain(config.domain)
    records = config.encoders
    encoders = {
        side: registry.encoder(records[side]["name"])(**records[side]["params"]) for side in SIDES
    }
    cls = registry.translator(config.translator)
    try:
        translator_config = cls.Config(**config.config)
    except TypeError as exc:  # the plugin's settings changed since the run was trained
        raise StyletxError(
            f"the run's {cls.name} settings do not fit the installed plugin ({exc})"
            + versions_note(config, registry)) from None
    with torch.random.fork_rng(devices=[]):  # its random initial weights are replaced by the
        #                                       saved ones: the caller's random state is kept
        translator = cls(translator_config, encoders["a"].channels, encoders["b"].channels)
    return domain, encoders, translator


def _parts(config: RunConfig) -> list[tuple[str, str]]:
    """(kind, name) of what the run is made of: translator, domain, encoders."""
    return [("translators", config.translator), ("domains", config.domain),
            *(("encoders", config.encoders[side]["name"]) for side in SIDES)]


def plugin_versions(config: RunConfig, registry: Registry) -> dict[str, str]:
    """{plugin: version} of the third-party plugins the run is made of, for config.json."""
    plugins = [registry.provider(kind, name) for kind, name in _parts(config)]
    return {p.name: p.version for p in plugins if p is not None and not p.builtin}


def versions_note(config: RunConfig, registry: Registry) -> str:
    """Where a third-party plugin the run is made of has another version than the one that
    trained it (or the run does not say), "; plugin "x" 0.2.0 is installed, the run was
    trained with 0.1.0": for the errors of saved weights or settings that no longer fit."""
    notes = []
    for name, version in plugin_versions(config, registry).items():
        trained = config.plugins.get(name)
        if trained != version:
            notes.append(f'plugin "{name}" {version} is installed, the run was trained with '
                         + (trained or "a version it does not record"))
    return "".join(f"; {note}" for note in notes)


def _missing_plugins(config: RunConfig, registry: Registry) -> str:
    tables = {"translators": registry.translators, "domains": registry.domains,
              "encoders": registry.encoders}
    wanted = [(kind[:-1], name, tables[kind]) for kind, name in _parts(config)]
    missing = [f"{kind} {name!r}" for kind, name, table in wanted if name not in table]
    return ", ".join(dict.fromkeys(missing))  # the same encoder on both sides: named once


def model_tensors(translator: Translator, encoders: dict[str, Encoder]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, net in translator.networks().items():
        tensors.update({f"net.{name}.{k}": v for k, v in net.state_dict().items()})
    for side, encoder in encoders.items():
        for key, value in encoder.state_dict().items():
            if not isinstance(value, torch.Tensor):
                raise StyletxError(f"the {encoder.name} encoder's state_dict holds {key!r} as "
                                   f"a {type(value).__name__}, not a tensor (the weights file "
                                   f"holds only tensors; settings go in params)")
            tensors[f"encoder.{side}.{key}"] = value
    return tensors


def load_model_tensors(
    translator: Translator, encoders: dict[str, Encoder], tensors: dict[str, torch.Tensor],
    run: Path | None = None, note: str = "",
) -> None:
    """The saved tensors into the networks and encoders. With ``run`` (the run folder), tensors
    that do not fit the model its config.json describes are one line naming both files (torch's
    message runs to a line per tensor), with ``note`` (``versions_note``) at its end."""
    networks = translator.networks()
    saved = _saved_networks(tensors, list(networks))
    holding = {name for name, net in networks.items() if net.state_dict()}  # saved at all
    if run is not None and saved != holding:  # not the weights' fault: say what changed
        raise StyletxError(f"{run / WEIGHTS} holds the networks {', '.join(sorted(saved))}; "
                           f"the {translator.name} translator as installed makes "
                           f"{', '.join(n for n in networks if n in holding)}: the translator "
                           f"changed since the run was trained (install the version that "
                           f"trained it), or the weights are another run's{note}")
    parts = [(f"network {name}", net, f"net.{name}.") for name, net in networks.items()]
    parts += [(f"encoder {side}", encoder, f"encoder.{side}.")
              for side, encoder in encoders.items()]
    for what, part, prefix in parts:
        try:
            part.load_state_dict(split_prefix(tensors, prefix))
        except (RuntimeError, KeyError) as exc:
            if run is None:
                raise
            raise StyletxError(f"{run / WEIGHTS}: does not match {run / CONFIG}: {what} "
                               f"({one_line(exc, limit=200, type_name=False)}){note}") from None


def _saved_networks(tensors: dict[str, torch.Tensor], names: list[str]) -> set[str]:
    """The network names of the saved tensors ("net.<name>.<parameter>"), ``names`` first
    (a name may hold a dot)."""
    saved = set()
    for key in tensors:
        if key.startswith("net."):
            known = [name for name in names if key.startswith(f"net.{name}.")]
            saved.add(known[0] if known else key[4:].split(".")[0])
    return saved


def pick_device(device: str | torch.device) -> torch.device:
    """``device`` ("auto", "cpu", "cuda", "cuda:1", or a ``torch.device``) as a torch.device
    this machine has."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS (Apple GPUs) is not available on this "
                         f"machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device}: not a device (use auto, cpu or cuda)") from None
