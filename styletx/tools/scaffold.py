"""``styletx plugins new NAME --kind translator|encoder|domain``: a working plugin package to
start from, installable with pip and with its own passing tests.

Each kind is the smallest plugin of its kind that does something real, written against the
public API only (docs/plugins.md, section 11):

translator  a per-channel gain and offset for each direction, learned so that the translated
            colours have the statistics of the other folder (unpaired); replace the networks
encoder     an image encoder whose per-channel mean and deviation are fitted on each training
            folder and saved with the run (``fit``, ``state_dict``), used with ``--encoder NAME``
domain      ``.npy`` files of 2-D float fields (height maps, measurements) in [0, 1], with an
            encoder of the same name: a modality the image domain cannot hold (float precision)
"""

from __future__ import annotations

import keyword
import re
import shutil
from pathlib import Path
from string import Template

from styletx.contract.errors import StyletxError, UsageError

KINDS = ("translator", "encoder", "domain")

PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "styletx-$name"
version = "0.1.0"
description = "A styletx $kind plugin: $name"
requires-python = ">=3.10"
dependencies = ["styletx"]

[project.optional-dependencies]
test = ["pytest"]

# styletx finds the plugin through this entry point: name = module
[project.entry-points.styletx]
$name = "$module"

[tool.setuptools]
py-modules = ["$module"]
''')

README = Template('''\
# styletx-$name

A styletx $kind plugin, made by `styletx plugins new $name --kind $kind`. Start from here:

    pip install -e .          # registers the entry point: `styletx plugins` lists "$name"
    python -m pytest tests    # its own tests: train with it, convert with it
$usage
The plugin guide: docs/plugins.md in the styletx repository (the hooks, every method the engine
calls and when, the checkpoint rules, the public API).
''')

USAGE = {
    "translator": "\n    styletx train A_DIR B_DIR --model $name --out runs/$name\n",
    "encoder": "\n    styletx train A_DIR B_DIR --encoder $name --preset tiny --out runs/$name\n",
    "domain": "\n    styletx train A_DIR B_DIR --preset tiny --out runs/$name # .npy files\n",
}

TRANSLATOR = Template('''\
"""styletx translator "$name": a per-channel gain and offset for each direction, learned so
that the translated colours have the statistics (mean and deviation per channel) of the other
folder. Unpaired, tiny and fast; replace the networks and the loss with your model."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import styletx


@dataclasses.dataclass
class Config:
    lr: float = 0.05  # Adam learning rate


class $cls(styletx.Translator):
    name = "$name"
    Config = Config
    presets = {
        "default": styletx.Preset(train={"steps": 200, "batch_size": 4, "size": 32},
                                  description="a colour cast learned in seconds"),
        "tiny": styletx.Preset(train={"steps": 60, "batch_size": 4, "size": 16},
                               description="for tests"),
    }

    def __init__(self, config: Config, channels_a: int, channels_b: int):
        super().__init__(config, channels_a, channels_b)
        if channels_a != channels_b:
            raise styletx.UsageError(f"$name maps colours channel by channel: both folders need "
                                     f"the same channels, not {channels_a} and {channels_b}")
        self.nets = {direction: nn.Conv2d(channels_a, channels_a, 1, groups=channels_a)
                     for direction in styletx.DIRECTIONS}
        for net in self.nets.values():  # start as the identity
            nn.init.ones_(net.weight)
            nn.init.zeros_(net.bias)

    def networks(self) -> dict[str, nn.Module]:
        return dict(self.nets)

    def configure_optimizers(self, total_steps: int) -> None:
        params = [p for net in self.nets.values() for p in net.parameters()]
        self.optimizers = {"G": torch.optim.Adam(params, lr=self.config.lr)}
        self.schedulers = {}

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        optimizer = self.optimizers["G"]
        optimizer.zero_grad(set_to_none=True)
        loss = self.forward_for("G", self._loss, batch["a"], batch["b"])
        loss.backward()
        optimizer.step()
        return {"statistics": float(loss.detach())}

    def _loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """How far each translation's per-channel mean and deviation are from the other side's."""
        loss = a.new_zeros(())
        for source, target, direction in ((a, b, "a2b"), (b, a, "b2a")):
            y = self.nets[direction](source)
            for reduce in (torch.mean, torch.std):
                gap = reduce(y, dim=(0, 2, 3)) - reduce(target, dim=(0, 2, 3))
                loss = loss + gap.square().sum()
        return loss

    def translate(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        with torch.no_grad():
            return self.export_module(direction)(x.to(self.device))

    def export_module(self, direction: str) -> nn.Module:
        """What translate computes, clamped to the encoders' [-1, 1], as one module: the
        export gives exactly translate's output."""
        styletx.direction_sides(direction)  # a2b or b2a, else a clear error
        return nn.Sequential(self.nets[direction], nn.Hardtanh(-1.0, 1.0))


@styletx.hookimpl
def register_translators(register):
    register($cls)
''')

ENCODER = Template('''\
"""styletx encoder "$name" for images: RGB standardised per channel, with the mean and
deviation fitted on each training folder and saved with the run, so conversion uses exactly the
training-time statistics. Use it with ``styletx train A B --encoder $name``."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

import styletx
from styletx.image import ImageSample


class $cls(styletx.Encoder):
    name = "$name"
    domain = "image"
    channels = 3

    def __init__(self, **params):
        super().__init__(**params)
        self.mean = np.full(3, 0.5, np.float32)
        self.std = np.full(3, 0.5, np.float32)

    def fit(self, samples) -> None:
        pixels = np.concatenate([self._rgb(s).reshape(-1, 3) for s in samples])
        self.mean = pixels.mean(axis=0).astype(np.float32)
        self.std = np.maximum(pixels.std(axis=0), 1e-3).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mean, self.std = state["mean"].numpy(), state["std"].numpy()

    def encode(self, sample: ImageSample) -> torch.Tensor:
        x = (self._rgb(sample) - self.mean) / self.std / 2  # about [-1, 1]
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), np.float32))

    def decode(self, tensor: torch.Tensor, like: ImageSample | None = None) -> ImageSample:
        x = tensor.detach().float().cpu().numpy().transpose(1, 2, 0)
        pixels = np.clip(x * 2 * self.std + self.mean, 0, 1).astype(np.float32)
        if like is None:
            return ImageSample(pixels)
        # the source's alpha, format, bit depth and metadata (ICC profile, EXIF, dpi) kept
        return dataclasses.replace(like, pixels=pixels, mode="")

    @staticmethod
    def _rgb(sample: ImageSample) -> np.ndarray:
        p = sample.pixels
        return np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p


@styletx.hookimpl
def register_encoders(register):
    register($cls)
''')

DOMAIN = Template('''\
"""styletx domain "$name": ``.npy`` files of 2-D float fields (height maps, measurements) with
values in [0, 1], and the encoder of the same name that turns a field into a tensor (1, H, W)
in [-1, 1]. Kept in float32 from file to file, which images cannot do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import styletx


class $cls(styletx.Domain):
    name = "$name"
    extensions = (".npy",)
    flip_augment = True

    def load(self, path: Path) -> np.ndarray:
        try:
            field = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise styletx.BadInputError(path, f"not a .npy array ({exc})") from None
        if field.ndim != 2 or min(field.shape) < 8:
            raise styletx.BadInputError(path, f"expected a 2-D field of at least 8 x 8, got "
                                              f"shape {field.shape}")
        if not np.issubdtype(field.dtype, np.floating) or not np.isfinite(field).all():
            raise styletx.BadInputError(path, "values must be finite floats")
        if field.min() < 0 or field.max() > 1:
            raise styletx.BadInputError(path, f"values must lie in [0, 1], not "
                                              f"[{field.min():.3g}, {field.max():.3g}]")
        return field.astype(np.float32)

    def save(self, sample: np.ndarray, path: Path) -> None:
        with open(path, "wb") as f:  # the engine gives a temporary path, renamed afterwards
            np.save(f, sample.astype(np.float32))

    def default_encoder(self, samples) -> str:
        return "$name"

    def from_array(self, array) -> np.ndarray:
        return np.asarray(array, np.float32)

    def to_array(self, sample: np.ndarray) -> np.ndarray:
        return sample


class ${cls}Encoder(styletx.Encoder):
    name = "$name"
    domain = "$name"
    channels = 1

    def encode(self, sample: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(sample * 2 - 1)[None]

    def decode(self, tensor: torch.Tensor, like: np.ndarray | None = None) -> np.ndarray:
        return np.clip((tensor.detach().float().cpu().numpy()[0] + 1) / 2, 0, 1)


@styletx.hookimpl
def register_domains(register):
    register($cls)


@styletx.hookimpl
def register_encoders(register):
    register(${cls}Encoder)
''')

TEST_HEADER = Template('''\
"""The $name plugin through styletx, as a user runs it (after `pip install -e .`)."""

from __future__ import annotations

import numpy as np
import pytest

import styletx

''')

TEST_TRANSLATOR = Template('''\
from PIL import Image


def write_photos(folder, seed, cast):
    """Smooth random colour images, with a colour cast ``cast`` (per channel, added)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    pictures = []
    for i in range(8):
        base = rng.random((4, 4, 3))
        picture = np.kron(base, np.ones((8, 8, 1))) * 0.6 + 0.2 + cast
        pictures.append(np.clip(picture, 0, 1))
        Image.fromarray((pictures[-1] * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    return pictures


def test_it_learns_the_colour_cast_of_the_other_folder(tmp_path):
    cast = np.array([0.15, 0.0, -0.15])
    write_photos(tmp_path / "a", 0, 0)
    write_photos(tmp_path / "b", 1, cast)
    result = styletx.train(tmp_path / "a", tmp_path / "b", tmp_path / "run", model="$name",
                           settings=styletx.TrainSettings(device="cpu", progress=False))
    run = styletx.load_run(result.run, device="cpu")
    source = write_photos(tmp_path / "test", 2, 0)[0]
    converted = run.convert_array(source)  # float in [0, 1], like the input
    truth = np.clip(source + cast, 0, 1)
    assert np.abs(converted - truth).mean() < 0.5 * np.abs(source - truth).mean()


def test_the_export_gives_what_translate_gives_and_a_bad_direction_is_clear():
    import torch

    from $module import $cls

    model = $cls($cls.Config(), 3, 3)
    x = torch.linspace(-3, 3, 48).reshape(1, 3, 4, 4)  # beyond [-1, 1]: both clamp alike
    assert torch.equal(model.translate(x, "a2b"), model.export_module("a2b")(x))
    with pytest.raises(styletx.UsageError, match="direction"):
        model.translate(torch.zeros(1, 3, 4, 4), "a2a")
''')

TEST_ENCODER = Template('''\
from PIL import Image

from $module import $cls
from styletx.image import ImageSample


def test_fitted_statistics_round_trip_and_reload():
    rng = np.random.default_rng(0)
    samples = [ImageSample(rng.random((6, 5, 3)).astype(np.float32)) for _ in range(3)]
    encoder = $cls()
    encoder.fit(samples)
    x = encoder.encode(samples[0])
    assert x.shape == (3, 6, 5) and abs(float(x.mean())) < 0.5
    assert np.allclose(encoder.decode(x).pixels, samples[0].pixels, atol=1e-5)
    again = $cls()
    again.load_state_dict(encoder.state_dict())
    assert np.allclose(again.encode(samples[0]).numpy(), x.numpy())
    # what the source file said of itself (colour profile, camera, dpi) goes with the output
    like = ImageSample(samples[0].pixels, format="PNG", metadata={"dpi": (300, 300)})
    assert encoder.decode(x, like=like).metadata == {"dpi": (300, 300)}


def test_a_model_trains_and_converts_with_it(tmp_path):
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        for i in range(4):
            pixels = np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / side / f"{i}.png")
    result = styletx.train(tmp_path / "a", tmp_path / "b", tmp_path / "run", preset="tiny",
                           encoder="$name", settings=styletx.TrainSettings(
                               steps=2, size=16, device="cpu", progress=False))
    run = styletx.load_run(result.run, device="cpu")
    report = run.convert_files([tmp_path / "a"], tmp_path / "out")
    assert len(report.converted) == 4 and not report.failed
''')

TEST_DOMAIN = Template('''\
def write_fields(folder, seed, scale):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(4):
        field = np.kron(rng.random((4, 4)), np.ones((6, 6))) * scale
        np.save(folder / f"{i}.npy", field.astype(np.float32))


def test_a_model_trains_and_converts_fields(tmp_path):
    write_fields(tmp_path / "a", 0, 0.5)
    write_fields(tmp_path / "b", 1, 1.0)
    result = styletx.train(tmp_path / "a", tmp_path / "b", tmp_path / "run", preset="tiny",
                           settings=styletx.TrainSettings(steps=2, size=16, device="cpu",
                                                          progress=False))
    run = styletx.load_run(result.run, device="cpu")
    report = run.convert_files([tmp_path / "a"], tmp_path / "out")
    assert len(report.converted) == 4 and not report.failed
    converted = np.load(tmp_path / "out" / "0.npy")
    assert converted.shape == (24, 24) and converted.dtype == np.float32
    assert 0 <= converted.min() and converted.max() <= 1
    in_memory = run.convert_array(np.load(tmp_path / "a" / "0.npy"))  # samples are arrays
    assert np.allclose(in_memory, converted, atol=1e-6)


def test_a_broken_file_is_named_with_its_problem(tmp_path):
    from $module import $cls

    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((10, 10), 3.0))
    with pytest.raises(styletx.BadInputError, match="values must lie in"):
        $cls().load(bad)
''')

TEMPLATES = {"translator": (TRANSLATOR, TEST_TRANSLATOR), "encoder": (ENCODER, TEST_ENCODER),
             "domain": (DOMAIN, TEST_DOMAIN)}


def new_plugin(name: str, kind: str, out: Path) -> Path:
    """Write the package ``styletx-NAME`` of a ``kind`` plugin into ``out``; its folder."""
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UsageError(f"plugin name {name!r}: use lower-case letters, digits and _, starting "
                         "with a letter (it names the --model / --encoder / --domain)")
    _check_name_is_free(name, kind)
    folder = out / f"styletx-{name.replace('_', '-')}"
    if folder.exists():
        raise UsageError(f"{folder} already exists; choose another name or --out")
    module = f"styletx_{name}"
    values = {"name": name, "kind": kind, "module": module,
              "cls": "".join(part.title() for part in name.split("_"))
              + ("" if name.endswith(kind) else kind.title())}
    code, test = TEMPLATES[kind]
    files = {
        "pyproject.toml": PYPROJECT.substitute(values),
        "README.md": README.substitute(values, usage=Template(USAGE[kind]).substitute(values)),
        f"{module}.py": code.substitute(values),
        f"tests/test_{name}.py": TEST_HEADER.substitute(values) + "\n" + test.substitute(values),
    }
    try:
        for relative, text in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    except OSError as exc:  # a read-only place, a file in the way: all of it or nothing
        shutil.rmtree(folder, ignore_errors=True)
        raise StyletxError(f"cannot write {exc.filename or folder}: {exc.strerror}") from None
    return folder


REGISTERS = {"translator": ("translators",), "encoder": ("encoders",),
             "domain": ("domains", "encoders")}  # what each kind of scaffold registers as NAME


def _check_name_is_free(name: str, kind: str) -> None:
    """A name a loaded plugin (built-in or installed) already uses as a plugin, or for what
    the new plugin would register, would make it fail to load the moment it is installed."""
    from styletx.contract.registry import get_registry

    registry = get_registry()
    for plugin in registry.plugins:
        taken = [table[:-1] for table, names in plugin.registers.items()
                 if table in REGISTERS[kind] and name in names]
        if plugin.name == name or taken:
            what = f"its {' and '.join(taken)}" if taken else "its plugin name"
            owner = "the built-in plugin" if plugin.builtin else "the installed plugin"
            raise UsageError(f"plugin name {name!r} is taken by {owner} {plugin.name!r} "
                             f"({what}); choose another")
