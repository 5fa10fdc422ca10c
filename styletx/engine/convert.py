"""Conversion with a trained run: the Python API behind ``styletx convert``.

    run = load_run("runs/summer2winter")        # load once
    run.convert_files(["a.jpg", "album/"], "out/")
    winter = run.convert_array(pixels)           # numpy in, numpy out

Inputs are translated at their full size: padded to the network's multiple, translated and
cropped back. Inputs are encoded with the *source* side's fitted encoder and decoded with the
*target* side's, so each domain's statistics are used where they belong.

Files are converted in batches: consecutive inputs whose encoded tensors have the same shape go
through the network together (up to ``batch_size`` of them, fewer for large inputs, see
``styletx.engine.apply``: on the CPU only small inputs gain from batching), long recordings'
chunks are batched the same way, and a background thread reads and encodes the next files while the
network runs (at most ``batch_size`` ahead). Each batch is decoded by the target encoder's
``decode_batch`` (the audio encoders: one batched Griffin-Lim). An input the domain cuts
into pieces (``Domain.conversion_pieces``: recordings longer than a minute) is converted a
piece at a time, with progress, and joined (``Domain.join_converted``). In evaluation mode the
outputs equal those of converting one file at a time, up to float rounding (oneDNN picks other
convolution kernels for other batch sizes: ~1e-6 apart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from styletx.contract.errors import (
    BadInputError,
    StyletxError,
    UsageError,
    WriteError,
    interrupt_status,
    is_out_of_memory,
    not_a,
    out_of_memory_problem,
)
from styletx.contract.files import (
    atomic_path,
    check_output_folder,
    check_writable,
    remove_stale_temporaries,
)
from styletx.contract.interfaces import Domain, Encoder, Sample, direction_sides
from styletx.contract.registry import Registry, get_registry
from styletx.engine.apply import (
    BATCH_SIZE,
    blend_chunks,
    chunk_starts,
    pad_for_network,
    per_call,
)
from styletx.engine.data import as_paths, expand_inputs, is_inside, read_ahead
from styletx.engine.model import (
    build_from_config,
    check_setting_type,
    encoded,
    load_model_tensors,
    pick_device,
    translated_values_problem,
    versions_note,
)
from styletx.engine.progress import Progress, log_failure, prefixed_messages
from styletx.engine.run_config import RunConfig
from styletx.engine.runs import load_weights
from styletx.engine.tiles import needs_tiles, translate_tiled

log = logging.getLogger("styletx")

DROPOUTS = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
            torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


@dataclasses.dataclass
class ConversionReport:
    """What ``convert_files`` did: (input, output) of each file written, (input, problem) of
    each that failed, and (input, output) of each left alone because its output existed
    (``skip_existing``)."""

    converted: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)


class ConversionInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during ``convert_files``: ``partial`` is the ConversionReport of the
    files before it (each output written is whole), ``status`` the exit status the interrupt
    asks for (130, or 143 for SIGTERM)."""

    def __init__(self, partial: ConversionReport, status: int = 130):
        super().__init__(f"interrupted after {len(partial.converted)} file(s) written")
        self.partial, self.status = partial, status


def load_run(path: Path | str, device: str = "auto", registry: Registry | None = None,
             keep_dropout: bool = False, precision: str = "fp32",
             normalize: str | None = None, vocoder: str | None = None,
             settings: dict[str, Any] | None = None) -> "Run":
    """Load a run folder's model for conversion (weights only; no code runs from the files).

    The networks run in evaluation mode; ``keep_dropout`` leaves their dropout layers on, for
    the stochastic outputs of a pix2pix-style generator (a different result each time).
    ``precision`` "bf16" runs the networks under bf16 autocast: faster on GPUs and on CPUs with
    bf16 instructions (1.65x for 256 px images with the default CycleGAN on an AVX512-BF16
    CPU), with slightly different output (41 dB PSNR against fp32 there). ``normalize``
    ("loudness" or "peak"; voice runs only) sets how decoded voices are scaled, ``vocoder``
    ("griffinlim" or "world"; spectrogram voice runs only) how they are turned into sound.
    ``settings`` replace the run's values of the translator's ``conversion_settings`` for
    this conversion (``styletx convert --set``; the run folder is not changed)."""
    run = Run(Path(path), device, registry or get_registry(), keep_dropout, precision,
              settings)
    if normalize is not None:
        run.set_normalize(normalize)
    if vocoder is not None:
        run.set_vocoder(vocoder)
    return run


def as_run(run: Run | Path | str, device: str = "auto",
           registry: Registry | None = None) -> Run:
    """``run`` itself when it is a loaded ``Run``, else the run folder it names, loaded (the
    API's functions take either)."""
    return run if isinstance(run, Run) else load_run(run, device=device, registry=registry)


PRECISIONS = ("fp32", "bf16")


def _change_conversion_settings(config: RunConfig, settings: dict[str, Any],
                                registry: Registry) -> None:
    """The run's translator settings with ``settings`` in place of its own, each of which
    must be one of the translator's ``conversion_settings`` (the rest shaped the weights)."""
    if config.translator not in registry.translators:
        return  # build_from_config names the missing plugin
    cls = registry.translator(config.translator)
    allowed = cls.conversion_settings
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    if not isinstance(allowed, tuple) or not set(allowed) <= set(fields):
        raise StyletxError(f"the {cls.name} plugin's conversion_settings must be a tuple of "
                           f"its Config's field names, not {allowed!r}")
    for key, value in settings.items():
        if key not in allowed:
            can = f"those it can: {', '.join(allowed)}" if allowed else "it has none"
            raise UsageError(f"--set {key}: not a setting the {cls.name} model can change when "
                             f"converting (the others are fixed when it is trained); {can}")
        check_setting_type(cls, key, value, fields[key])
    config.config = {**config.config, **settings}


def _listed(settings: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in settings.items())


class Run:
    """A trained run loaded for conversion (``load_run`` makes one): ``convert_files`` for
    files and folders, ``convert_array`` for in-memory arrays, ``convert_sample`` for a
    domain's samples (e.g. ``AudioSample(wave, rate)``), ``convert_tensor`` for encoded
    tensors. ``domain``, ``encoders`` (by side), ``translator``, ``device``, ``step`` and
    ``config`` (the run's ``RunConfig``) describe it. Load once, convert many times."""

    def __init__(self, path: Path, device: str, registry: Registry, keep_dropout: bool = False,
                 precision: str = "fp32", settings: dict[str, Any] | None = None):
        if precision not in PRECISIONS:
            raise UsageError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
        self.path = path
        # how this conversion differs from the run's own (its evaluations stay out of the
        # run's report): the options as the CLI names them
        self.variant = [f"--set {k}={v}" for k, v in (settings or {}).items()]
        self.variant += ["--keep-dropout"] * keep_dropout
        self.variant += [f"--precision {precision}"] * (precision != "fp32")
        self.config = RunConfig.read(path)
        if settings:
            _change_conversion_settings(self.config, settings, registry)
        self.domain, self.encoders, self.translator = build_from_config(self.config, registry)
        tensors, self.step = load_weights(path)
        try:
            load_model_tensors(self.translator, self.encoders, tensors, run=path,
                               note=versions_note(self.config, registry))
        except UsageError as exc:  # e.g. a match_k larger than the saved matching set
            if not settings:
                raise
            raise UsageError(f"--set {_listed(settings)}: {exc}") from None
        self.device = pick_device(device)
        self.translator.to(self.device, amp=False)
        self.translator.train(False)
        if keep_dropout:
            self._keep_dropout()
        self.precision = precision
        if precision == "bf16" and self.device.type == "cpu" and not _cpu_has_bf16():
            log.warning("--precision bf16: this CPU has no bf16 instructions, so bf16 is "
                        "emulated and slower than fp32")

    def __repr__(self) -> str:
        config = self.config
        return (f"<Run {str(self.path)!r}: {config.translator} ({config.preset}), "
                f"{config.domain}, step {self.step}, on {self.device}>")

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _keep_dropout(self) -> None:
        layers = [m for net in self.translator.networks().values() for m in net.modules()
                  if isinstance(m, DROPOUTS)]
        if not layers:
            raise UsageError(f"--keep-dropout: the {self.translator.name} model has no dropout")
        for layer in layers:
            layer.train(True)

    def set_normalize(self, normalize: str) -> None:
        """How the decoded outputs are scaled, for encoders that offer a choice (``normalize``
        and its choices ``NORMALIZE``: the voice encoders' "loudness" or "peak")."""
        self._set_encoder_choice("normalize", "NORMALIZE", normalize, "voice runs")

    def set_vocoder(self, vocoder: str) -> None:
        """How decoded spectrograms become sound, for encoders that offer a choice
        (``vocoder`` and its choices ``VOCODERS``: the spectrogram encoders' "griffinlim" or
        "world", styletx.audio.vocoder). Checks that pyworld is there before anything is
        converted."""
        from styletx.audio.vocoder import pyworld

        self._set_encoder_choice("vocoder", "VOCODERS", vocoder, "spectrogram voice runs")
        if vocoder == "world":
            pyworld()

    def _set_encoder_choice(self, setting: str, choices_name: str, value: str,
                            runs: str) -> None:
        """Every encoder's ``setting`` to ``value``, one of its ``choices_name``; a usage
        error naming the side whose encoder offers no such choice (``runs``: those that do)."""
        for side, encoder in self.encoders.items():
            choices = getattr(encoder, choices_name, None)
            if choices is None:
                raise UsageError(f"--{setting} is for {runs}: {self.path}'s {side.upper()} "
                                 f"side has the {encoder.name} encoder, which has no choice")
            if value not in choices:
                raise UsageError(f"--{setting} {value}: use one of {', '.join(choices)}")
            setattr(encoder, setting, value)
        self.variant.append(f"--{setting} {value}")

    # -- tensors and samples -----------------------------------------------------------------
    def convert_tensor(self, x: torch.Tensor, direction: str = "a2b",
                       batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Translate a batch ``(N, C, H, W)`` of any H, W (padded to the multiple, cropped back).

        For domains with ``chunk_frames`` (audio), inputs wider than that are translated in
        overlapping chunks along W, cross-faded, so memory stays bounded for any length; the
        chunks (all of the same width) go through the network up to ``batch_size`` at a time
        (see ``apply.BATCH_ELEMENTS``).
        """
        direction_sides(direction)  # validates it
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1 (got {batch_size})")
        chunk = self.domain.chunk_frames
        if chunk and x.shape[-1] > chunk:
            return self._convert_chunked(x, direction, chunk, self.domain.chunk_overlap,
                                         batch_size)
        if self.domain.tiles and self.translator.tileable and needs_tiles(*x.shape[-2:]):
            networks = torch.nn.ModuleList(self.translator.networks().values())
            return torch.cat([translate_tiled(lambda t: self._convert_whole(t, direction),
                                              networks, x[i : i + 1]) for i in range(len(x))])
        return self._convert_whole(x, direction)

    def _convert_chunked(self, x: torch.Tensor, direction: str, chunk: int,
                         overlap: int, batch_size: int = 1) -> torch.Tensor:
        """Chunks of ``chunk`` frames every ``chunk - overlap``, blended back with linear
        ramps in each overlap (``apply.blend_chunks``). Every chunk of every input is
        translated first, up to ``batch_size`` chunks per network call (within
        ``apply.BATCH_ELEMENTS``; chunk-major: chunk 0 of each input, then chunk 1, ...)."""
        width = x.shape[-1]
        starts = chunk_starts(width, chunk, chunk - overlap)
        pieces = torch.cat([x[..., start : start + chunk] for start in starts])
        step = per_call(batch_size, self.device, x.shape[-2] * chunk)
        translated = torch.cat([self._convert_whole(pieces[i : i + step], direction)
                                for i in range(0, len(pieces), step)])
        del pieces
        return blend_chunks(translated.split(len(x)), starts, width, overlap)

    def _convert_whole(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = pad_for_network(x, self.translator.size_multiple)
        with torch.inference_mode(), self._autocast():
            y = self.translator.translate(padded.to(self.device), direction)
        self._check_translated(padded, y, direction)
        return y[..., :h, :w].float().cpu()

    def _check_translated(self, x: torch.Tensor, y: Any, direction: str) -> None:
        """``translate`` must give ``(N, C_target, H, W)`` for ``(N, C_source, H, W)``: an
        output of another size was cropped into a smaller picture without a word."""
        target = direction_sides(direction)[1]
        expected = (len(x), self.encoders[target].channels, *x.shape[-2:])
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != expected:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise StyletxError(f"the {self.translator.name} translator's translate gave {got} "
                               f"for {tuple(x.shape)} ({direction}), not {expected}")
        if not y.is_floating_point():
            raise StyletxError(f"the {self.translator.name} translator's translate gave "
                               f"{translated_values_problem(y)} ({direction})")
        if translated_values_problem(y):  # NaN had been written as black pixels
            raise _NotFinite(f"the {direction} translation holds NaN or infinite values (from "
                             "the run's weights, or from this input)")

    def convert_sample(self, sample: Sample, direction: str = "a2b",
                       batch_size: int = BATCH_SIZE) -> Sample:
        """One sample, converted; in pieces (with progress) where the domain cuts it."""
        try:
            pieces = self.domain.conversion_pieces(sample)
            if len(pieces) == 1:
                return self._convert_piece(pieces[0], direction, batch_size)
            return self._convert_in_pieces(pieces, direction, batch_size)
        except _DecodeRefused as exc:
            raise exc.__cause__ from None
        except AttributeError:  # an array given where the domain's samples are objects (for
            #                     a domain whose samples are arrays this is its own bug)
            if isinstance(sample, np.ndarray | torch.Tensor):
                raise _not_a_sample(self.domain, sample) from None
            raise

    def _convert_in_pieces(self, pieces: list[Sample], direction: str, batch_size: int,
                           path: Path | None = None) -> Sample:
        """The pieces of one sample (of the file ``path``, which the progress bar and an
        encoder's error name), converted and joined."""
        converted = []
        label = path.name if path is not None else "converting"
        with Progress(label, "pieces", len(pieces), leave=False) as progress:
            for piece in pieces:
                converted.append(self._convert_piece(piece, direction, batch_size, path))
                progress.update()
        return self.domain.join_converted(converted)

    def _convert_piece(self, sample: Sample, direction: str, batch_size: int,
                       path: Path | None = None) -> Sample:
        """One sample (or a piece of one) converted; an encoder's error names ``path``."""
        source, target = direction_sides(direction)
        x = encoded(self.encoders[source], sample, path)[None]
        return self._decode(target, self.convert_tensor(x, direction, batch_size), [sample])[0]

    def _decode(self, side: str, y: torch.Tensor, likes: list[Sample]) -> list[Sample]:
        """The ``side`` encoder's ``decode_batch``; its refusal (say, a plugin's decoder that
        cannot decode one file's output) is ``_DecodeRefused``, so the file fails alone."""
        encoder = self.encoders[side]
        try:
            decoded = encoder.decode_batch(self._for_decoding(side, y), likes=likes)
        except (UsageError, WriteError):
            raise  # wrong settings, a full disk: no file would fare better
        except StyletxError as exc:
            raise _DecodeRefused(str(exc)) from exc
        _check_decoded(encoder, decoded, likes)
        return decoded

    def _for_decoding(self, side: str, y: torch.Tensor) -> torch.Tensor:
        """``y`` where the ``side`` encoder decodes: the run's device when it decodes there."""
        return y.to(self.device) if self.encoders[side].decodes_on_device else y

    def convert_array(self, array: Any, direction: str = "a2b") -> Any:
        """Convert an in-memory array of the run's domain, in the domain's array form (images:
        ``(H, W, C)`` uint8, uint16 or float in; float32 in [0, 1] out, alpha last)."""
        sample = self.domain.from_array(array)
        return self.domain.to_array(self.convert_sample(sample, direction))

    # -- files -------------------------------------------------------------------------------
    def convert_files(
        self,
        inputs: Iterable[Path | str] | Path | str,
        out_dir: Path | str,
        direction: str = "a2b",
        batch_size: int = BATCH_SIZE,
        on_file: Callable[[Path, Path | None, str | None], None] | None = None,
        out_format: str | None = None,
        on_start: Callable[[int], None] | None = None,
        skip_existing: bool = False,
    ) -> ConversionReport:
        """Convert files and folders (recursively) into ``out_dir``, mirroring relative paths.

        A file that cannot be read is reported (``on_file(src, None, problem)``; without
        ``on_file``, a warning on the "styletx" logger) and skipped; the rest are converted.
        Consecutive inputs of equal encoded shape are translated ``batch_size`` at a time
        (fewer when large: ``apply.BATCH_ELEMENTS``), while a background thread reads and
        encodes the next ones. Outputs keep each input's format unless ``out_format`` (a suffix
        such as "png") says otherwise, and are written atomically, in input order. With a
        latent model (vaegan), an input unlike the training data is named in a warning.
        ``on_start(count)`` is told how many files there are before the first one. Ctrl-C
        raises ConversionInterrupted, which holds the report of the files before it.
        ``skip_existing``: an input whose output exists is left alone (``report.skipped``), so
        that an interrupted conversion continues where it stopped (every output written is
        whole); otherwise existing outputs are replaced, with a warning.
        """
        self.translator.check_direction(direction)  # before any work
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
        suffix = self._output_suffix(out_format)
        out_dir, jobs = Path(out_dir), self._plan(inputs, Path(out_dir), suffix)
        made = not out_dir.exists()
        check_writable(out_dir)  # once, before any work: not one error per file
        report = ConversionReport()
        # (a folder where an output goes is no output: writing there fails with its name)
        there = {dst for _, dst in jobs if dst is not None and dst.is_file()}
        if skip_existing:
            report.skipped = [(src, dst) for src, dst in jobs if dst in there]
            jobs = [(src, dst) for src, dst in jobs if dst not in there]
        elif there:  # e.g. a second run into the same folder: say so rather than lose them quietly
            log.warning("replacing %d existing file(s) in %s, e.g. %s (--skip-existing leaves "
                        "them)", len(there), out_dir, next(dst for _, dst in jobs if dst in there))
        try:
            self._convert_jobs(jobs, direction, batch_size, on_file, on_start, report)
            return report
        except KeyboardInterrupt as stop:
            raise ConversionInterrupted(report, interrupt_status(stop)) from None
        finally:  # nothing converted (bad inputs, an error): no empty folder left behind
            if made and not any(out_dir.iterdir()):
                out_dir.rmdir()

    def _convert_jobs(self, jobs: list, direction: str, batch_size: int,
                      on_file: Callable[[Path, Path | None, str | None], None] | None,
                      on_start: Callable[[int], None] | None, report: ConversionReport) -> None:
        source, _ = direction_sides(direction)
        if on_start is not None:
            on_start(len(jobs))
        on_file = on_file or log_failure
        pending: list[tuple[Path, Path, Sample, torch.Tensor]] = []
        check = self.translator.input_check(self, source)  # e.g. unusual inputs
        # A background thread loads and encodes the next files (Pillow, soundfile, numpy and
        # torch release the GIL) while the network runs, at most batch_size files ahead.
        loading = (self._load(src, dst, source) for src, dst in jobs)
        with contextlib.closing(read_ahead(loading, batch_size, "styletx-convert")) as loads:
            for src, dst, loaded in loads:
                try:
                    if isinstance(loaded, BadInputError):
                        raise loaded
                    sample, x = loaded
                    if check:
                        check(src, sample)
                except BadInputError as err:
                    report.failed.append((src, err.problem))
                    on_file(src, None, err.problem)
                    continue
                if pending and not self._joins(pending, x, batch_size):
                    self._flush(pending, direction, report, on_file, batch_size)
                pending.append((src, dst, sample, x))
        self._flush(pending, direction, report, on_file, batch_size)

    def _load(self, src: Path, dst: Path | None, side: str
              ) -> tuple[Path, Path | None, tuple[Sample, torch.Tensor | list] | BadInputError]:
        """``(src, dst, (sample, encoded))``, or the problem with the file in place of the pair
        (reported by the caller, in input order); for an input converted in pieces, its pieces
        in place of ``encoded`` (each is encoded when its turn comes)."""
        try:
            if dst is None:
                kinds = " ".join(self.domain.extensions)
                raise BadInputError(src, f"{not_a(self.domain.name)} ({kinds})")
            sample = self.domain.load(src)
            pieces = self.domain.conversion_pieces(sample)
            if len(pieces) > 1:
                return src, dst, (sample, pieces)
            return src, dst, (sample, encoded(self.encoders[side], sample, src))
        except BadInputError as err:
            return src, dst, err

    def _joins(self, pending: list, x: torch.Tensor, batch_size: int) -> bool:
        """May ``x`` join the pending batch? Same shape, and the batch within its limits (an
        input in pieces goes alone)."""
        if isinstance(x, list) or isinstance(pending[0][3], list) or pending[0][3].shape != x.shape:
            return False
        chunk = self.domain.chunk_frames
        width = min(x.shape[-1], chunk) if chunk else x.shape[-1]  # what one network call sees
        return len(pending) + 1 <= per_call(batch_size, self.device, x.shape[-2] * width)

    def _output_suffix(self, out_format: str | None) -> str | None:
        if out_format is None:
            return None
        suffix = "." + out_format.lower().lstrip(".")
        # what the domain writes: the formats whose output name keeps their suffix (audio
        # reads MP3 and OGG but writes a WAV for them); told before any file is converted
        writable = [e for e in self.domain.extensions
                    if Path(self.domain.output_name(Path(f"x{e}"))).suffix.lower() == e]
        if suffix not in writable:
            known = ", ".join(e.lstrip(".") for e in writable)
            problem = (f"{self.domain.name} is not written as {suffix.lstrip('.')}"
                       if suffix in self.domain.extensions
                       else not_a(self.domain.name, "format"))
            raise UsageError(f"--format {out_format}: {problem} (it writes {known})")
        return suffix

    def _plan(
        self, inputs: Iterable[Path | str], out_dir: Path, suffix: str | None
    ) -> list[tuple[Path, Path | None]]:
        """(input, output) for every file; output None for a named file of another kind."""
        check_output_folder(out_dir)
        jobs: list[tuple[Path, Path | None]] = []
        seen: dict[Path, Path] = {}
        items = list(map(Path, as_paths(inputs)))
        for item in items:
            if not item.exists():
                raise UsageError(f"{item}: no such file or folder")
            if item.is_dir() and is_inside(out_dir, item):
                raise UsageError(f"-o {out_dir} is inside the input folder {item}; choose another")
            jobs += self._jobs_of(item, out_dir, suffix, seen)
        jobs = _once_each(jobs)
        if not jobs:
            raise UsageError(f"no {self.domain.name} files to convert in "
                             f"{', '.join(map(str, items[:3]))}{' ...' if len(items) > 3 else ''} "
                             f"({' '.join(self.domain.extensions)})")
        outputs = [dst for _, dst in jobs if dst is not None]
        by_folder: dict[Path, list[Path]] = {}
        for dst in outputs:
            by_folder.setdefault(dst.parent, []).append(dst)
        for folder, files in by_folder.items():  # what a conversion killed mid-write left
            remove_stale_temporaries(folder, of=files)
        return jobs

    def _jobs_of(self, item: Path, out_dir: Path, suffix: str | None,
                 seen: dict[Path, Path]) -> list[tuple[Path, Path | None]]:
        """(input, output) for a named file or every file of a named folder; output None for a
        named file of another kind (reported later, never passed over)."""
        jobs, ignored = [], []
        for src, rel in expand_inputs([item]):
            if self.domain.handles(src):
                jobs.append((src, self._output(src, out_dir / rel.parent, suffix, seen)))
            elif item.is_dir():
                ignored.append(src)  # folders may hold other files
            else:
                jobs.append((src, None))
        if ignored:
            log.warning("ignoring %d file(s) in %s that are not %s files, e.g. %s",
                        len(ignored), item, self.domain.name, ignored[0].name)
        return jobs

    def _output(self, src: Path, folder: Path, suffix: str | None,
                seen: dict[Path, Path]) -> Path:
        """Where ``src`` is written in ``folder``; two inputs may not share it, nor an input be
        overwritten (one file named twice, or named and in a named folder, is one input)."""
        dst = folder / self.domain.output_name(src)
        dst = dst.with_suffix(suffix) if suffix else dst
        if dst.resolve() == src.resolve():
            raise UsageError(f"{src}: the output would overwrite the input; use another -o")
        if dst in seen and seen[dst].resolve() != src.resolve():
            raise UsageError(f"{src} and {seen[dst]} would both be written to {dst}")
        seen[dst] = src
        return dst

    def _flush(self, pending, direction, report, on_file, batch_size: int = BATCH_SIZE) -> None:
        """Translate and write the pending batch; on running out of memory, one at a time."""
        if not pending:
            return
        problem = None
        names = ", ".join(src.name for src, *_ in pending)  # what a decoder warns about
        try:
            with prefixed_messages(f"{names}: ", once=True, level=logging.WARNING):
                converted_all = self._translate_batch(pending, direction, batch_size)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            x = pending[0][3]
            shape = "" if isinstance(x, list) else " at " + "x".join(map(str, x.shape[-1:-3:-1]))
            problem = out_of_memory_problem(exc, f"on {self.device} translating it{shape}")
        except (_DecodeRefused, _NotFinite) as exc:
            problem = str(exc)
        if problem is not None:  # here, not in the handler, so the failed tensors are freed
            release_cached_memory(self.device)
            if len(pending) > 1:  # one file's problem or too much memory: one at a time
                for item in list(pending):
                    self._flush([item], direction, report, on_file, batch_size)
            else:
                report.failed.append((pending[0][0], problem))
                on_file(pending[0][0], None, problem)
            pending.clear()
            return
        for (src, dst, _, _), converted in zip(pending, converted_all):
            problem = self._write(converted, dst)
            if problem is None:
                report.converted.append((src, dst))
                on_file(src, dst, None)
            else:
                report.failed.append((src, problem))
                on_file(src, None, problem)
        pending.clear()

    def _write(self, converted: Sample, dst: Path) -> str | None:
        """Write one output atomically; the problem, or None. A full disk stops everything."""
        try:
            with atomic_path(dst) as tmp:
                self.domain.save(converted, tmp)
                if not tmp.exists():  # else the rename's "no such file" blames the folder
                    raise StyletxError(f"the {self.domain.name} domain's save wrote no file "
                                       f"at the path it was given ({tmp.name}, for {dst})")
        except WriteError as exc:
            if exc.disk_full:
                raise  # the next files would not fit either
            return str(exc)
        except ValueError as exc:  # e.g. a format that cannot hold the image
            return f"cannot write {dst} ({exc})"
        return None

    def _translate_batch(self, pending, direction: str, batch_size: int) -> list[Sample]:
        if isinstance(pending[0][3], list):  # one input, in pieces
            src, _, _, pieces = pending[0]
            return [self._convert_in_pieces(pieces, direction, batch_size, src)]
        out = self.convert_tensor(torch.stack([x for *_, x in pending]), direction, batch_size)
        return self._decode(direction_sides(direction)[1], out,
                            [sample for *_, sample, _ in pending])


def _once_each(jobs: list[tuple[Path, Path | None]]) -> list[tuple[Path, Path | None]]:
    """The jobs without repeats: a file named twice (by any path) is converted once."""
    once = {}
    for src, dst in jobs:
        once.setdefault((src.resolve(), dst), (src, dst))
    return list(once.values())


def _check_decoded(encoder: Encoder, decoded: Any, likes: list[Sample]) -> None:
    """A decoder must give one sample per tensor, of the kind the domain loads (a plugin's
    bare array or tensor was only found when the domain's ``save`` broke on it)."""
    if not isinstance(decoded, list | tuple) or len(decoded) != len(likes):
        got = f"{len(decoded)} item(s)" if isinstance(decoded, list | tuple) else \
            type(decoded).__name__
        raise StyletxError(f"the {encoder.name} encoder's decode_batch gave {got}, not a list "
                           f"of {len(likes)} sample(s)")
    for sample, like in zip(decoded, likes):
        if like is not None and not isinstance(sample, type(like)):
            raise StyletxError(f"the {encoder.name} encoder's decode gave a "
                               f"{type(sample).__module__}.{type(sample).__name__}, not the "
                               f"{type(like).__name__} its domain loads and saves")


def _not_a_sample(domain: Domain, array: Any) -> UsageError:
    """``convert_sample`` given an array where the domain's samples are objects (it failed
    inside the encoder with an AttributeError), with the domain's own word on arrays where
    it refuses them."""
    kind = f"{type(array).__module__}.{type(array).__name__}"
    try:
        domain.from_array(np.zeros((2, 2, 3), np.float32))
        hint = "convert_array converts arrays"
    except UsageError as refusal:
        hint = str(refusal)
    except Exception:  # noqa: BLE001 -- a domain without arrays, or one of another shape
        hint = f"see the {domain.name} domain's load"
    return UsageError(f"convert_sample takes a sample of the {domain.name} domain (what its "
                      f"load gives), not a {kind}; {hint}")


class _NotFinite(StyletxError):
    """A translation holds NaN or infinite values: the file fails alone (one input may do it,
    or every one, from weights gone bad); a StyletxError where one file is converted."""


class _DecodeRefused(Exception):
    """The target encoder refused to decode a batch: each of its files is tried alone and, if
    refused again, reported as failed with the encoder's reason; the others are converted."""


def release_cached_memory(device: torch.device) -> None:
    """Give the GPU memory PyTorch holds but no longer uses back, after running out of it."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX); a private torch check,
    so any failure counts as yes (the warning it guards is advice only)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True

