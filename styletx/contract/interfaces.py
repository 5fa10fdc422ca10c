"""The three plugin interfaces: Domain, Encoder and Translator.

A *domain* knows a modality's files, an *encoder* turns one loaded sample into a tensor
``(C, H, W)`` and back, and a *translator* is the model that maps tensors of domain A to
domain B and back. Plugins subclass these and register them through the hooks in
``styletx.contract.hookspecs``. Everything here is public API; keep it small.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from styletx.contract.errors import UsageError, some_of

Sample = Any  # whatever a domain loads: an image array with its metadata, a waveform, ...
SIDES = ("a", "b")  # the two folders (domains) of a run
DIRECTIONS = ("a2b", "b2a")


def direction_sides(direction: str) -> tuple[str, str]:
    """``"a2b"`` -> ``("a", "b")``, ``"b2a"`` -> ``("b", "a")`` (source, target); anything
    else is a ``UsageError`` naming ``--direction``."""
    if direction not in DIRECTIONS:
        raise UsageError(f"--direction {direction!r}: use a2b or b2a")
    return direction[0], direction[2]
T = TypeVar("T")


class FolderSamples(list):
    """One training folder's samples (a list), with ``files``: their paths, in the same order,
    for a warning that names them."""

    def __init__(self, samples: Sequence[Any], files: Sequence[Path]):
        super().__init__(samples)
        self.files = list(files)

    @staticmethod
    def named(samples: Sequence[Any], chosen: Sequence[int], first: int = 5) -> str:
        """" (a.wav, b.wav and 3 more)": the files of ``chosen`` (indices into ``samples``),
        the first few by name; "" when ``samples`` is a plain list that knows no files."""
        files = getattr(samples, "files", None)
        if files is None or not chosen:
            return ""
        return f" ({some_of((Path(files[i]).name for i in chosen), first)})"


class Domain(ABC):
    """A modality's files: which ones it reads, how to load, validate and save them."""

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]  # lower-case suffixes with the dot, e.g. (".png",)
    flip_augment: ClassVar[bool] = False  # may training mirror examples left-right?
    # Conversion translates tensors wider than chunk_frames in overlapping, cross-faded chunks
    # (bounded memory for long recordings); None = always whole (images).
    chunk_frames: ClassVar[int | None] = None
    chunk_overlap: ClassVar[int] = 0
    # Conversion may cut a large input into overlapping square tiles along H and W (images: a
    # bounded memory for any size; see styletx.engine.tiles), when the translator allows it.
    tiles: ClassVar[bool] = False
    # Paired training: True when the two files of a pair may differ in length along W (the same
    # sentence spoken faster) and are aligned by dynamic time warping of their encoded frames;
    # False: a pair of different sizes has its B side resized to the A side's (with a warning).
    pairs_by_time: ClassVar[bool] = False
    # Evaluation: the metrics ``compare`` returns, each with "higher" or "lower" (is better).
    metrics: ClassVar[dict[str, str]] = {}
    # The translator ``train`` uses for these files when no --model is given.
    default_translator: ClassVar[str] = "cyclegan"
    # Does ``save_preview`` write one picture, ``stem.png``, of any grid of rows (``styletx
    # traverse`` then writes all its walks as one)? None: only if it is not overridden.
    one_picture_preview: ClassVar[bool | None] = None

    def handles(self, path: Path) -> bool:
        return path.suffix.lower() in self.extensions

    @abstractmethod
    def load(self, path: Path) -> Sample:
        """Read one file; raise ``BadInputError(path, problem)`` if it cannot be used."""

    @abstractmethod
    def save(self, sample: Sample, path: Path) -> None:
        """Write ``sample`` to ``path`` (the caller makes the write atomic)."""

    def output_name(self, source: Path) -> str:
        """File name of the converted version of ``source`` (same format by default)."""
        return source.name

    def describe(self, samples: Sequence[Sample]) -> str:
        """A short summary of a training folder's readable samples, printed before training
        (files too short for a training crop are reported after it, when they are encoded)."""
        return f"{len(samples)} readable {self.name} file(s)"

    def compare_folders(self, samples: dict[str, Sequence[Sample]]) -> list[str]:
        """Warnings about an unpaired model's two training folders taken together (``samples``
        by side, "a" and "b"; each a ``FolderSamples``, whose ``files`` name them), each one
        line printed before training: e.g. a kind of file only one folder has in part, which
        the model would learn as part of the style."""
        return []

    def from_array(self, array: Any) -> Sample:
        """An in-memory array (e.g. an image ``(H, W, C)``) as a sample, for the Python API."""
        raise NotImplementedError(f"the {self.name} domain does not convert arrays")

    def to_array(self, sample: Sample) -> Any:
        """The inverse of ``from_array``."""
        raise NotImplementedError(f"the {self.name} domain does not convert arrays")

    def conversion_pieces(self, sample: Sample) -> list[Sample]:
        """An input cut into pieces that conversion takes one at a time, each encoded,
        translated and decoded alone, then joined by ``join_converted``: memory bounded for any
        length, and progress within one long input. Default: the input whole, ``[sample]``
        (images are tiled in tensor space instead, ``tiles``)."""
        return [sample]

    def join_converted(self, pieces: list[Sample]) -> Sample:
        """The converted ``pieces`` of one input (``conversion_pieces``), in order, as one."""
        if len(pieces) != 1:
            raise NotImplementedError(f"the {self.name} domain does not join pieces")
        return pieces[0]

    def split_aligned(self, sample: Sample, path: Path) -> tuple[Sample, Sample]:
        """One file that holds A and B side by side (``--aligned``) -> ``(a, b)``; raise
        ``BadInputError(path, problem)`` for a file that cannot be split."""
        raise UsageError(f"--aligned: {self.name} files do not hold pairs side by side")

    def compare(self, converted: Sample, target: Sample) -> dict[str, float]:
        """Score ``converted`` against the true ``target`` with the domain's ``metrics``; raise
        ``ValueError`` with a one-line reason for a pair that cannot be measured."""
        raise UsageError(f"the {self.name} domain has no evaluation metrics")

    def default_encoder(self, samples: Sequence[Sample]) -> str:
        """Name of the encoder to use for a folder holding ``samples``."""
        raise NotImplementedError

    def prepare_for_training(self, sample: Sample, size: int) -> Sample:
        """Bring a sample to training scale (e.g. resize an image to the load size)."""
        return sample

    def training_enlargement(self, sample: Sample, size: int) -> float:
        """How many times ``prepare_for_training`` enlarges ``sample`` (images: the load size
        over the shorter side); training warns about files it enlarges much, whose blur the
        model would learn as part of the style. 1 for none."""
        return 1.0

    def training_flaw(self, sample: Sample) -> str | None:
        """A flaw of the file that a model would learn as part of the style, in a few words
        (audio: "clipped: 2.1 % of its samples at full scale"), or None; training warns,
        naming the file, and trains on it."""
        return None

    def training_crop(self, size: int) -> tuple[int | None, int]:
        """(height, width) of a training crop of the encoded tensor; None = full height."""
        return size, size

    def save_preview(self, rows: list[list[torch.Tensor]], encoders: list[list[Encoder]],
                     stem: Path, titles: list[list[str]] | None = None) -> None:
        """Write a training preview: ``rows`` of tensors ``(C, H, W)`` (input, translated,
        reconstructed), the encoder that decodes each and each tile's title (e.g. "translated
        (B)"); default: one labelled picture ``stem.png``. (An override without ``titles`` still
        works: the engine then leaves them out.)"""
        from styletx.image.previews import save_grid

        save_grid(rows, stem.with_suffix(".png"), titles=titles)


class Encoder(ABC):
    """Sample <-> tensor ``(C, H, W)``. May be fitted per training folder.

    ``params`` are JSON-serialisable settings (saved in ``config.json``); the fitted state is a
    dict of tensors (saved in ``model.safetensors``). Rebuilding with the same params and loading
    the state must give exactly the training-time encoder.
    """

    name: ClassVar[str]
    domain: ClassVar[str]  # name of the domain whose samples it encodes
    channels: int  # C of the tensors it produces
    # True: ``decode`` and ``decode_batch`` take tensors on the run's device (a GPU) and decode
    # there (the spectrogram encoders run Griffin-Lim on it); False: they get CPU tensors.
    decodes_on_device: ClassVar[bool] = False
    # the settings (params) a user may change (``train --encoder-set KEY=VALUE``), with their
    # defaults; an encoder that declares none takes none from the command line
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any):
        self.params = params

    def fit(self, samples: Sequence[Sample]) -> None:
        """Learn statistics from one training folder's samples; default: nothing to learn."""

    def width_before_fit(self, sample: Sample) -> int | None:
        """The width (last axis) that ``encode(sample)`` will have, told cheaply and before
        ``fit``, so that a folder too short to train on is refused before a costly fit; None
        (the default): not known until encoded."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"encoder {self.name!r} has no state but got {sorted(state)}")

    @abstractmethod
    def encode(self, sample: Sample) -> torch.Tensor:
        """Sample -> float32 tensor ``(C, H, W)``."""

    @abstractmethod
    def decode(self, tensor: torch.Tensor, like: Sample | None = None) -> Sample:
        """Tensor ``(C, H, W)`` -> sample; ``like`` is the source sample, for its metadata."""

    def decode_batch(self, tensors: torch.Tensor,
                     likes: Sequence[Sample | None] | None = None) -> list[Sample]:
        """``decode`` of every item of ``(N, C, H, W)`` (``likes``: each one's source sample).
        Conversion decodes through this; override it when a batch decodes faster together
        (the audio encoders: one batched Griffin-Lim). It must give what ``decode`` gives."""
        likes = list(likes) if likes is not None else [None] * len(tensors)
        return [self.decode(t, like=like) for t, like in zip(tensors, likes)]


PRESET_TRAIN_KEYS = ("steps", "batch_size", "size")  # what a preset's train may set


@dataclasses.dataclass
class Preset:
    """Named settings: overrides for the translator's Config and for the trainer."""

    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # PRESET_TRAIN_KEYS
    description: str = ""
    # Config values that depend on how much data there is: called with the number of files
    # of the smaller side once the folders are read, its values replace ``config``'s (the
    # user's --set still wins) and are saved in config.json like the rest.
    for_files: Callable[[int], dict[str, Any]] | None = None

    def by_files(self, files: int | None) -> dict[str, Any]:
        """``for_files``' values for ``files`` files a side ({} without it, or before the
        number is known: None)."""
        return {} if files is None or self.for_files is None else self.for_files(files)

    def config_for(self, files: int | None) -> dict[str, Any]:
        """The Config values of this preset for ``files`` files a side (None: not known yet)."""
        return {**self.config, **self.by_files(files)}


@dataclasses.dataclass(frozen=True)
class TrainingContext:
    """How the engine runs a translator's networks: on which device, under bf16 autocast or not
    (CUDA only), and, under torchrun, through the DistributedDataParallel module that wraps the
    networks each optimizer trains. The engine sets it (``Translator.to``, the distributed
    setup); a translator only reads it, through its ``device``, ``amp``, ``autocast`` and
    ``forward_for``."""

    device: torch.device = torch.device("cpu")
    amp: bool = False
    wrappers: Mapping[str, nn.Module] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))  # optimizer name -> its DDP module

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def forward(self, optimizer: str, forward: Callable[..., T], *args: Any) -> T:
        wrapper = self.wrappers.get(optimizer)
        return forward(*args) if wrapper is None else wrapper(forward, *args)


class Translator(ABC):
    """The model. Owns its networks, optimizers and the logic of one training step.

    Life cycle: ``__init__(config, channels_a, channels_b)`` builds the networks;
    ``to(device, amp=...)``; ``configure_optimizers(total_steps)`` for training; then
    ``training_step`` repeatedly, or ``translate`` for inference.
    """

    name: ClassVar[str]
    Config: ClassVar[type]  # a dataclass; every field has a default and a comment
    presets: ClassVar[dict[str, Preset]] = {"default": Preset()}
    # Presets for one domain replace ``presets`` there, e.g. {"audio": {"default": ..., "tiny":
    # ...}} for a spectrogram-shaped network and 64-frame crops when the files are audio.
    domain_presets: ClassVar[dict[str, dict[str, Preset]]] = {}

    @classmethod
    def presets_for(cls, domain: str) -> dict[str, Preset]:
        return cls.domain_presets.get(domain, cls.presets)

    @classmethod
    def config_for_data(cls, config: Any, shapes: dict[str, tuple[int, ...]],
                        crop: tuple[int | None, int]) -> Any:
        """Fill settings that depend on the data before the networks are built (e.g. the
        number of frequency bins, or a depth that suits the crop); ``shapes`` holds one encoded
        example's ``(C, H, W)`` per side and ``crop`` the training crop (height, None for the
        full height, and width). The result is saved in config.json, so conversion rebuilds the
        same networks."""
        return config
    paired: ClassVar[bool] = False  # needs (a, b) examples that belong together
    # Settings of ``Config`` that change only how a trained run converts, not what it learns
    # (e.g. how many frames a match averages): ``styletx convert --set`` may change them for
    # one conversion (a value the saved tensors cannot serve is refused as they load). Every
    # other setting is fixed when the run is trained.
    conversion_settings: ClassVar[tuple[str, ...]] = ()
    # Does the model convert only after ``finish_training``? Then every checkpoint calls it
    # first (it must be quick, and the next training step must undo what it changed in
    # training's terms), so that any checkpoint converts: a run stopped by Ctrl-C or SIGTERM,
    # and the earlier checkpoint a damaged last save falls back to.
    finish_when_interrupted: ClassVar[bool] = False

    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    # How the engine runs the networks (device, autocast, DDP); replaced by the engine, read by
    # ``device``, ``amp``, ``autocast`` and ``forward_for``.
    context: TrainingContext = TrainingContext()

    def __init__(self, config: Any, channels_a: int, channels_b: int):
        self.config = config
        self.channels = {"a": channels_a, "b": channels_b}
        self.optimizers, self.schedulers = {}, {}

    # -- networks -------------------------------------------------------------------------
    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Every network by a stable name; saved, loaded and shared between training processes
        by name."""

    def generator_networks(self) -> dict[str, nn.Module]:
        """The networks that translate, which ``train --compile`` compiles. By default every
        network whose name does not start with "D" (the built-ins' discriminators are named
        D, D_A, D_a, ...); override it when that does not fit."""
        return {name: net for name, net in self.networks().items() if not name.startswith("D")}

    @property
    def size_multiple(self) -> int:
        """Inputs to ``translate`` must have H and W divisible by this (the caller pads)."""
        return 1

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def amp(self) -> bool:
        return self.context.amp

    def to(self, device: torch.device | str, amp: bool = False) -> Translator:
        """Move the networks; ``amp`` enables bf16 autocast on CUDA (ignored on CPU)."""
        device = torch.device(device)
        self.context = dataclasses.replace(self.context, device=device,
                                           amp=amp and device.type == "cuda")
        for net in self.networks().values():
            net.to(device)
        return self

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes: bf16 autocast when enabled, else nothing."""
        return self.context.autocast()

    def train(self, mode: bool = True) -> None:
        for net in self.networks().values():
            net.train(mode)

    # -- training -------------------------------------------------------------------------
    @abstractmethod
    def configure_optimizers(self, total_steps: int) -> None:
        """Fill ``self.optimizers`` and ``self.schedulers`` (the trainer steps the schedulers)."""

    @abstractmethod
    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One optimisation step on ``{"a": (N,C,H,W), "b": (N,C,H,W)}``; returns the losses."""

    def forward_for(self, optimizer: str, forward: Callable[..., T], *args: Any) -> T:
        """``forward(*args)``: the forward pass whose loss the optimizer named ``optimizer``
        (a key of ``self.optimizers``) steps on next. In one process that is all it does.

        Under torchrun it runs through the DistributedDataParallel module that wraps the
        networks this optimizer trains, so the backward pass that follows averages their
        gradients over the processes. Run each optimizer's forward pass this way once before
        its backward pass; every parameter of the optimizer must get a gradient there. Inside
        ``forward``, and after it until the backward, call the networks directly as in one
        process; networks the loss uses without training them (a frozen discriminator) too."""
        return self.context.forward(optimizer, forward, *args)

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Training state beyond weights and optimizers (e.g. image pools), as tensors."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    # -- inference ------------------------------------------------------------------------
    @abstractmethod
    def translate(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """Map a batch ``(N, C, H, W)`` in ``direction`` ("a2b" or "b2a")."""

    def check_direction(self, direction: str) -> None:
        """Raise ``UsageError`` for a direction this model cannot translate; ``convert`` and
        ``evaluate`` ask before any file is read. The default takes a2b and b2a."""
        direction_sides(direction)

    def export_module(self, direction: str) -> nn.Module:
        """The networks of ``direction`` as one plain module, for ``styletx export``: ``(N,
        C_src, H, W) -> (N, C_dst, H, W)``, equal to ``translate(x, direction)`` in evaluation
        mode for every input ``translate`` takes (H and W multiples of ``size_multiple``: the
        exporter pads to them, as conversion does). It shares the translator's parameters.

        Its forward must not branch in Python on the input's size (``if``, ``max``): tracing
        and torch.export decide such a branch once, for the example input, so the exported
        graph would be wrong for other sizes. Pad and crop with ``styletx.PadCrop`` /
        ``styletx.pad_bottom_right``, which compute F.pad's result with integer
        arithmetic and gathers. Raise ``UsageError`` for a direction the model cannot
        translate; the default says that the model cannot be exported."""
        raise UsageError(f"the {self.name} model cannot be exported (its translator has no "
                         f"export_module)")

    # -- extras the engine calls (optional) -------------------------------------------------
    def finish_training(self, examples: dict[str, list[torch.Tensor]]) -> None:
        """Called once the last step is taken (the planned count, or the last that ``--minutes``
        allows), before that step's checkpoint is saved, on the main process only, with each
        side's encoded training examples ``(C, H, W)``: fit what is fitted after training (the
        voice CycleGAN's post-filters); the checkpoint saves it. Not called when a run stops
        early (Ctrl-C, a failure): the resumed run calls it at its end. An exception from it
        is a warning, and the checkpoint is saved without what it would have fitted. It must
        leave the RNG as it found it (the checkpoint saves that too). Default: nothing. (A
        model with ``finish_when_interrupted`` gets it before every checkpoint.)"""

    def on_trained(self, run: Path, examples: dict[str, list[torch.Tensor]],
                   chunk: int | None) -> None:
        """Called when a training command has trained and saved (on the main process only),
        with each side's encoded training examples ``(C, H, W)`` and the domain's chunk width
        (``Domain.chunk_frames``): write extra outputs into the run folder ``run``. Default:
        nothing."""

    def trained_outputs_missing(self, run: Path) -> bool:
        """Are ``on_trained``'s outputs missing from the trained run ``run`` (say, a Ctrl-C
        while it wrote them)? Then the same training command, finding the run trained, calls
        ``on_trained`` again instead of doing nothing. Default: False."""
        return False

    def input_check(self, run: Any, side: str) -> Callable[[Path, Sample], None] | None:
        """For conversion with the loaded ``run`` (a ``styletx.engine.convert.Run``): a function
        ``(path, sample)`` called for each input of ``side`` before it is translated, e.g. to
        warn about inputs unlike the training data; None (the default) for no check."""
        return None

    # True: the translation of a region depends only on what is near it, apart from per-image
    # normalisations (InstanceNorm2d, GroupNorm) that tiling fixes to the whole image's
    # statistics; then a large image may be converted in tiles (Domain.tiles). False (the
    # default, for anything global such as attention or pooling over the image): always whole.
    tileable: ClassVar[bool] = False

    # What the columns of ``preview``'s rows show, for the titles of the preview pictures.
    preview_columns: ClassVar[tuple[str, ...]] = ("input", "translated", "reconstructed")

    def preview(self, batch: dict[str, torch.Tensor]) -> list[list[tuple[str, torch.Tensor]]]:
        """Rows of ``(side, tensor (C, H, W))`` for a preview grid, the side naming the domain
        whose encoder decodes the tensor; default: input, translated, reconstructed
        (``preview_columns`` names them)."""
        rows = []
        with torch.no_grad():
            for src, direction, back in (("a", "a2b", "b2a"), ("b", "b2a", "a2b")):
                x = batch[src][:1]
                y = self.translate(x, direction)
                rows.append([(src, x[0]), (direction[2], y[0]), (src, self.translate(y, back)[0])])
        return rows


class LatentTranslator(Translator):
    """A translator with a probabilistic latent space (VAE/GAN): ``styletx sample``,
    ``traverse`` and ``score``, the out-of-domain warning of ``convert`` and ``train --balance``
    work on any translator that subclasses this. Latents are spatial ``(N, latent_channels,
    h, w)`` with ``h, w`` about the input's ``H, W / latent_stride``; the prior is N(0, I)."""

    latent_stride: ClassVar[int] = 1  # input pixels / frames per latent position

    @property
    @abstractmethod
    def latent_channels(self) -> int:
        """Channels of a latent."""

    @abstractmethod
    def encode_latent(self, x: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C_side, H, W)`` -> posterior ``(mu, logvar)``, each ``(N, latent_channels, h,
        w)``; no gradients."""

    @abstractmethod
    def decode_latent(self, z: torch.Tensor, side: str,
                      size: tuple[int, int] | None = None) -> torch.Tensor:
        """``(N, latent_channels, h, w)`` -> ``(N, C_side, H, W)`` of domain ``side``, cropped
        to ``size`` when given; no gradients."""

    @abstractmethod
    def negative_elbo(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """``(N,)`` per input element (reconstruction error + KL): higher means less like the
        training data of ``side``; one of the outlier score's features (``styletx.tools.
        latent``)."""

    # The latent tools (styletx.tools.latent) give every latent model these two extras.
    def on_trained(self, run: Path, examples: dict[str, list[torch.Tensor]],
                   chunk: int | None) -> None:
        """Scores of the training examples (``latent.json``): the baseline of the outlier
        check and of ``styletx score``."""
        from styletx.tools.latent import save_training_statistics

        self.train(False)
        save_training_statistics(run, self, examples, self.device, chunk=chunk)

    def trained_outputs_missing(self, run: Path) -> bool:
        from styletx.tools.latent import has_training_statistics

        return not has_training_statistics(run)

    def input_check(self, run: Any, side: str) -> Callable[[Path, Sample], None] | None:
        """Warn about inputs unlike the training data (scored against ``latent.json``)."""
        from styletx.tools.latent import outlier_check

        return outlier_check(run, side)
