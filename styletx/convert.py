"""Conversion with a trained run: the Python API behind ``styletx convert``.

    run = load_run("runs/summer2winter")        # load once
    run.convert_files(["a.jpg", "album/"], "out/")
    winter = run.convert_array(pixels)           # numpy in, numpy out

Inputs are translated at their full size: padded to the network's multiple, translated and
cropped back. Inputs are encoded with the *source* side's fitted encoder and decoded with the
*target* side's, so each domain's statistics are used where they belong.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data import expand_inputs, is_inside
from .errors import BadInputError, StyletxError, UsageError
from .interfaces import DIRECTIONS, Sample
from .latent import outlier_check
from .model import build_from_config, load_model_tensors, pick_device
from .registry import Registry, get_registry
from .runs import CONFIG, WEIGHTS, atomic_path, load_weights, read_config

log = logging.getLogger("styletx")

DROPOUTS = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
            torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


@dataclasses.dataclass
class ConversionReport:
    converted: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)


def load_run(path: Path | str, device: str = "auto", registry: Registry | None = None,
             keep_dropout: bool = False) -> "Run":
    """Load a run folder's model for conversion (weights only; no code runs from the files).

    The networks run in evaluation mode; ``keep_dropout`` leaves their dropout layers on, for
    the stochastic outputs of a pix2pix-style generator (a different result each time)."""
    return Run(Path(path), device, registry or get_registry(), keep_dropout)


class Run:
    def __init__(self, path: Path, device: str, registry: Registry, keep_dropout: bool = False):
        self.path = path
        self.config = read_config(path)
        self.domain, self.encoders, self.translator = build_from_config(self.config, registry)
        tensors, self.step = load_weights(path)
        try:
            load_model_tensors(self.translator, self.encoders, tensors)
        except (RuntimeError, KeyError) as exc:
            raise StyletxError(
                f"{path / WEIGHTS}: does not match {path / CONFIG} ({exc})"
            ) from None
        self.device = pick_device(device)
        self.translator.to(self.device, amp=False)
        self.translator.train(False)
        if keep_dropout:
            self._keep_dropout()

    def _keep_dropout(self) -> None:
        layers = [m for net in self.translator.networks().values() for m in net.modules()
                  if isinstance(m, DROPOUTS)]
        if not layers:
            raise UsageError(f"--keep-dropout: the {self.translator.name} model has no dropout")
        for layer in layers:
            layer.train(True)

    # -- tensors and samples -----------------------------------------------------------------
    def convert_tensor(self, x: torch.Tensor, direction: str = "a2b") -> torch.Tensor:
        """Translate a batch ``(N, C, H, W)`` of any H, W (padded to the multiple, cropped back).

        For domains with ``chunk_frames`` (audio), inputs wider than that are translated in
        overlapping chunks along W, cross-faded, so memory stays bounded for any length.
        """
        _check_direction(direction)
        chunk = self.domain.chunk_frames
        if chunk and x.shape[-1] > chunk:
            return self._convert_chunked(x, direction, chunk, self.domain.chunk_overlap)
        return self._convert_whole(x, direction)

    def _convert_chunked(self, x: torch.Tensor, direction: str, chunk: int,
                         overlap: int) -> torch.Tensor:
        """Chunks of ``chunk`` frames every ``chunk - overlap``; in each overlap the two chunks
        are blended with complementary linear ramps, so there is no step at the seam."""
        width = x.shape[-1]
        starts = list(range(0, width - chunk, chunk - overlap)) + [width - chunk]
        out, weight = None, torch.zeros(width)
        for i, start in enumerate(starts):
            y = self._convert_whole(x[..., start : start + chunk], direction)
            w = torch.ones(chunk)
            if i > 0:  # fade in over the overlap with the previous chunk
                fade = min(overlap, starts[i - 1] + chunk - start)
                w[:fade] = torch.linspace(0, 1, fade + 2)[1:-1]
            if i < len(starts) - 1:  # fade out over the overlap with the next chunk
                fade = min(overlap, start + chunk - starts[i + 1])
                w[chunk - fade :] = torch.linspace(1, 0, fade + 2)[1:-1]
            if out is None:
                out = torch.zeros(*y.shape[:-1], width)
            out[..., start : start + chunk] += y * w
            weight[start : start + chunk] += w
        return out / weight

    def _convert_whole(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.translator.size_multiple
        # Round up to the multiple, and to at least two multiples so that even a tiny input
        # keeps more than one element at the network's coarsest scale (instance norm needs it).
        pad_h, pad_w = max(-h % m, 2 * m - h), max(-w % m, 2 * m - w)
        if pad_h or pad_w:
            # Reflection hides the border best; tiny inputs can only be replicated.
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        with torch.inference_mode():
            y = self.translator.translate(x.to(self.device), direction)
        return y[..., :h, :w].float().cpu()

    def convert_sample(self, sample: Sample, direction: str = "a2b") -> Sample:
        source, target = direction_sides(direction)
        x = self.encoders[source].encode(sample)[None]
        return self.encoders[target].decode(self.convert_tensor(x, direction)[0], like=sample)

    def convert_array(self, array: Any, direction: str = "a2b") -> Any:
        """Convert an in-memory array (e.g. an image ``(H, W, C)``) of the run's domain."""
        sample = self.domain.from_array(array)
        return self.domain.to_array(self.convert_sample(sample, direction))

    # -- files -------------------------------------------------------------------------------
    def convert_files(
        self,
        inputs: Iterable[Path | str],
        out_dir: Path | str,
        direction: str = "a2b",
        batch_size: int = 1,
        on_file: Callable[[Path, Path | None, str | None], None] | None = None,
        out_format: str | None = None,
    ) -> ConversionReport:
        """Convert files and folders (recursively) into ``out_dir``, mirroring relative paths.

        A file that cannot be read is reported (``on_file(src, None, problem)``) and skipped; the
        rest are converted. Inputs of equal size are translated ``batch_size`` at a time. Outputs
        keep each input's format unless ``out_format`` (a suffix such as "png") says otherwise.
        With a latent model (vaegan), an input unlike the training data is named in a warning.
        """
        source, _ = direction_sides(direction)  # validates the direction before any work
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
        suffix = self._output_suffix(out_format)
        out_dir, jobs = Path(out_dir), self._plan(inputs, Path(out_dir), suffix)
        report = ConversionReport()
        on_file = on_file or (lambda *_: None)
        pending: list[tuple[Path, Path, Sample, torch.Tensor]] = []
        check = outlier_check(self, source)  # latent models warn about unusual inputs
        for src, dst in jobs:
            try:
                if dst is None:
                    kinds = " ".join(self.domain.extensions)
                    raise BadInputError(src, f"not a {self.domain.name} file ({kinds})")
                sample = self.domain.load(src)
                x = self.encoders[source].encode(sample)
                if check:
                    check(src, sample)
            except BadInputError as err:
                report.failed.append((src, err.problem))
                on_file(src, None, err.problem)
                continue
            if pending and (len(pending) == batch_size or pending[0][3].shape != x.shape):
                self._flush(pending, direction, report, on_file)
            pending.append((src, dst, sample, x))
        self._flush(pending, direction, report, on_file)
        return report

    def _output_suffix(self, out_format: str | None) -> str | None:
        if out_format is None:
            return None
        suffix = "." + out_format.lower().lstrip(".")
        if suffix not in self.domain.extensions:
            known = ", ".join(e.lstrip(".") for e in self.domain.extensions)
            raise UsageError(f"--format {out_format}: not a {self.domain.name} format ({known})")
        return suffix

    def _plan(
        self, inputs: Iterable[Path | str], out_dir: Path, suffix: str | None
    ) -> list[tuple[Path, Path | None]]:
        """(input, output) for every file; output None for a named file of another kind."""
        jobs: list[tuple[Path, Path | None]] = []
        seen: dict[Path, Path] = {}
        for item in map(Path, inputs):
            ignored = []
            if not item.exists():
                raise UsageError(f"{item}: no such file or folder")
            if item.is_dir() and is_inside(out_dir, item):
                raise UsageError(f"-o {out_dir} is inside the input folder {item}; choose another")
            for src, rel in expand_inputs([item]):
                if not self.domain.handles(src):
                    if item.is_dir():
                        ignored.append(src)  # folders may hold other files
                    else:
                        jobs.append((src, None))  # a named file must not be passed over
                    continue
                dst = out_dir / rel.parent / self.domain.output_name(src)
                dst = dst.with_suffix(suffix) if suffix else dst
                if dst.resolve() == src.resolve():
                    raise UsageError(f"{src}: the output would overwrite the input; use another -o")
                if dst in seen:
                    raise UsageError(f"{src} and {seen[dst]} would both be written to {dst}")
                seen[dst] = src
                jobs.append((src, dst))
            if ignored:
                log.warning("ignoring %d file(s) in %s that are not %s files, e.g. %s",
                            len(ignored), item, self.domain.name, ignored[0].name)
        if not jobs:
            raise UsageError(f"no {self.domain.name} files to convert in the given inputs")
        return jobs

    def _flush(self, pending, direction, report, on_file) -> None:
        if not pending:
            return
        _, target = direction_sides(direction)
        batch = torch.stack([x for *_, x in pending])
        out = self.convert_tensor(batch, direction)
        for (src, dst, sample, _), y in zip(pending, out):
            converted = self.encoders[target].decode(y, like=sample)
            try:
                with atomic_path(dst) as tmp:
                    self.domain.save(converted, tmp)
            except (OSError, ValueError) as exc:
                problem = f"cannot write {dst} ({exc})"
                report.failed.append((src, problem))
                on_file(src, None, problem)
                continue
            report.converted.append((src, dst))
            on_file(src, dst, None)
        pending.clear()


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise UsageError(f"--direction {direction!r}: use a2b or b2a")


def direction_sides(direction: str) -> tuple[str, str]:
    """"a2b" -> ("a", "b")."""
    _check_direction(direction)
    return (direction[0], direction[2])
