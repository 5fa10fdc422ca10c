"""The latent space of a VAE/GAN run: sampling, traversal and outlier scores.

    run = load_run("runs/s2w-vae")               # a run whose translator is a LatentTranslator
    sample(run, "b", 16, "out/")                 # decode z ~ N(0, I): new B-like examples
    traverse(run, "photo.png", [0, 3], "out/")   # walk latent channels 0 and 3 of one input
    report = score(run, ["inbox/"])              # how unlike the training data each input is

Outlier scores are the translator's ``negative_elbo`` (for vaegan: its VAE training loss per
example, reconstruction error + KL per element, weighted as in training). At the end of training
``save_training_statistics`` scores every training example and writes ``RUN/latent.json``; an
input is then placed against its side's training scores (its percentile) and flagged "unlike the
training data" when its score exceeds

    threshold = THRESHOLD_MARGIN * (the THRESHOLD_QUANTILE quantile of the training scores)

The default rule was measured on tiny vaegan runs (300 steps on 48 ``styletx.demo`` scenes, data
and training seeds 0, 1, 2; scored: 12 held-out scenes, 12 uniform noise images, 12 random
stripes; tests/test_latent.py is seed 0). Held-out scenes score above the training ones (the
model partly memorises 48 examples), so a margin is needed: at 1.0 it flagged 2, 6 and 2 of the
12 held-out scenes, at 1.3 1, 2 and 0, while still flagging all the noise and 8, 7 and 11 of the
stripes; at 1.5 no held-out scene, 9-12 noise images and 4-9 stripes. The rule is saved in
``latent.json`` with the scores, so a run keeps the calibration it was trained with. A model
trained on a dozen examples memorises them: held-out inputs then score well above the training
ones, and are flagged too.

Inputs are scored at training scale: each is brought there with the domain's
``prepare_for_training`` (images: the shorter side resized to the training load size; audio:
silence trimmed), as the training examples were, and spectrograms longer than the domain's
``chunk_frames`` are scored in chunks (a width-weighted mean), so memory stays bounded.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from styletx.contract.errors import BadInputError, StyletxError, UsageError
from styletx.contract.interfaces import SIDES, Domain, LatentTranslator, Sample
from styletx.engine.apply import chunk_starts, group_by_shape
from styletx.engine.data import expand_inputs
from styletx.engine.runs import write_json

if TYPE_CHECKING:
    from styletx.engine.convert import Run

log = logging.getLogger("styletx")

STATS = "latent.json"
THRESHOLD_QUANTILE = 0.95  # the training scores' quantile the threshold is built on
THRESHOLD_MARGIN = 1.3  # flagged above this many times that quantile (measured, see above)
ROW = 8  # sample grids: tiles per row
BATCH = 16  # examples scored per forward pass


# -- training statistics ----------------------------------------------------------------------
def save_training_statistics(run: Path, translator: LatentTranslator,
                             examples: dict[str, list[torch.Tensor]], device: Any,
                             chunk: int | None = None) -> None:
    """Score every encoded training example ``(C, H, W)`` of each side and write ``RUN/
    latent.json``: per side the sorted scores, the per-channel mean and standard deviation of
    the posterior means (over all examples and latent positions) and one example's shape.

    Called by ``LatentTranslator.on_trained`` at the end of training, the networks in
    evaluation mode. ``chunk``:
    examples wider than this many frames are encoded in chunks (pass the domain's
    ``chunk_frames``, as ``score`` and ``convert`` use it)."""
    stats: dict[str, Any] = {}
    for side in SIDES:
        items = examples.get(side) or []
        if not items:
            continue
        scores = _scores(translator, items, side, chunk, device)
        total = torch.zeros(translator.latent_channels, dtype=torch.float64)
        square = torch.zeros_like(total)
        count = 0
        pieces = [piece for x in items for piece, _ in _pieces(x, chunk)]
        for batch, _ in _batches(pieces):
            mu, _ = translator.encode_latent(batch.to(device), side)
            mu = mu.double().cpu().transpose(0, 1).flatten(1)  # (channels, N * h * w)
            total += mu.sum(1)
            square += mu.square().sum(1)
            count += mu.shape[1]
        mean = total / count
        std = (square / count - mean.square()).clamp(min=0).sqrt()
        stats[side] = {
            "scores": sorted(scores),
            "latent_mean": [round(v, 6) for v in mean.tolist()],
            "latent_std": [round(v, 6) for v in std.tolist()],
            "shape": list(items[0].shape),
        }
    stats["threshold"] = {"quantile": THRESHOLD_QUANTILE, "margin": THRESHOLD_MARGIN}
    write_json(Path(run) / STATS, stats)


def load_training_statistics(run: Path | str) -> dict[str, Any] | None:
    """``RUN/latent.json`` as written by ``save_training_statistics``; None when absent."""
    path = Path(run) / STATS
    if not path.is_file():
        return None
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StyletxError(f"{path}: unreadable latent statistics ({exc})") from None
    if not isinstance(stats, dict):
        raise StyletxError(f"{path}: unreadable latent statistics (not an object)")
    return stats


def threshold_for(scores: Sequence[float], quantile: float = THRESHOLD_QUANTILE,
                  margin: float = THRESHOLD_MARGIN) -> float:
    """The score above which an input is flagged: ``margin`` times the ``quantile`` of the
    training ``scores`` (linear interpolation between the sorted scores)."""
    values = sorted(scores)
    if not values:
        raise ValueError("no training scores")
    pos = quantile * (len(values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(values) - 1)
    return margin * (values[low] + (values[high] - values[low]) * (pos - low))


def percentile(scores: Sequence[float], value: float) -> float:
    """Share of the sorted training ``scores`` below ``value``, in percent."""
    return 100.0 * bisect.bisect_left(scores, value) / len(scores)


# -- checks -------------------------------------------------------------------------------------
def require_latent(run: Run) -> LatentTranslator:
    """The run's translator, or a usage error when it has no latent space."""
    if not isinstance(run.translator, LatentTranslator):
        raise UsageError(f"the {run.translator.name} model has no latent space (sample, "
                         "traverse and score need a vaegan run)")
    return run.translator


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise UsageError(f"--domain {side!r}: use a or b")


def _training_scores(run: Run, side: str) -> dict[str, Any]:
    stats = load_training_statistics(run.path)
    if stats is None or not isinstance(stats.get(side), dict) or not stats[side].get("scores"):
        raise StyletxError(f"{run.path}: no training scores ({STATS} is missing or incomplete; "
                           "it is written when training finishes)")
    return stats


# -- sampling -----------------------------------------------------------------------------------
def sample(run: Run, side: str, n: int, out: Path | str, seed: int = 0,
           size: int | None = None) -> list[Path]:
    """Decode ``n`` latents drawn from the prior N(0, I) with ``side``'s decoder and write them
    through the domain's preview, 8 per row (images: one grid ``OUT/samples.png``; audio:
    spectrograms in ``OUT/samples.png`` and a clip per tile, ``OUT/samples-a0.wav`` ...).
    Each latent has the shape of a training crop's, or with ``size`` of a crop of that size
    as ``train --size`` means it (images: ``size`` pixels square; audio: ``size`` frames).
    Returns the written files."""
    translator = require_latent(run)
    _check_side(side)
    if n < 1:
        raise UsageError(f"-n must be at least 1 (got {n})")
    height, width = _crop_shape(run, side, size)
    # The latent of a crop of that shape (exact for any padding or stride the model uses).
    probe = torch.zeros(1, translator.channels[side], height, width)
    mu, _ = translator.encode_latent(probe.to(run.device), side)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *mu.shape[1:]), generator=generator)
    tiles = []
    for batch in z.split(BATCH):
        tiles += list(translator.decode_latent(batch.to(run.device), side,
                                               size=(height, width)).float().cpu())
    # Rows of 8; audio previews letter their rows' clips a to z, so at most 26 rows.
    per_row = max(ROW, -(-n // 26))
    rows = [tiles[i : i + per_row] for i in range(0, n, per_row)]
    return _write_preview(run, rows, side, Path(out) / "samples")


def _crop_shape(run: Run, side: str, size: int | None) -> tuple[int, int]:
    """(height, width) of a training crop of ``side``, or of a crop of ``size`` (what
    ``train --size`` means: images ``size`` x ``size``, spectrograms every bin x ``size``)."""
    if size is not None and size < 1:
        raise UsageError(f"--size must be at least 1 (got {size})")
    height, width = run.domain.training_crop(size or run.config.train.size)
    if height is None:  # the full height of the encoded examples (audio: every bin)
        height = run.config.encoded_height(side)
        if height is None:  # an older run: latent.json recorded one example's shape
            shape = ((load_training_statistics(run.path) or {}).get(side) or {}).get("shape")
            if shape is None:
                raise StyletxError(f"{run.path}: the run records no example shape (config.json "
                                   "\"shapes\"); train it with this version of styletx")
            height = int(shape[1])
    return height, width


# -- traversal ----------------------------------------------------------------------------------
def traverse(run: Run, input_path: Path | str, dims: Sequence[int] | None = None,
             out: Path | str = "traverse", steps: int = 7, k: float = 3.0,
             side: str = "a") -> list[Path]:
    """Encode ``input_path`` with ``side``'s encoder (posterior mean z), then for each latent
    channel d of ``dims`` shift that channel's whole map by ``t * std_d`` for ``steps`` values
    of t from -k to +k, holding the rest, and decode each with the same side's decoder at the
    input's size. ``std_d`` is the spread of channel d's posterior means over the training
    examples (``latent.json``; 1, the prior's, without it), so every channel moves over its
    own range. ``dims`` None: the 4 channels with the largest spread. Writes ``OUT/dimNN``
    previews (one row of ``steps`` tiles each) and, for images, ``OUT/all.png`` with a row per
    channel; returns the written files."""
    translator = require_latent(run)
    _check_side(side)
    channels = translator.latent_channels
    if steps < 2:
        raise UsageError(f"--steps must be at least 2 (got {steps})")
    if not (k > 0 and math.isfinite(k)):
        raise UsageError(f"--range must be a positive number (got {k})")
    stats = load_training_statistics(run.path) or {}
    std = (stats.get(side) or {}).get("latent_std")
    if not isinstance(std, list) or len(std) != channels:
        std = [1.0] * channels
    if dims is None:
        dims = sorted(sorted(range(channels), key=lambda d: -std[d])[: min(4, channels)])
    dims = list(dict.fromkeys(dims))  # each once, in the order given
    if not dims:
        raise UsageError("--dims: name at least one latent channel")
    bad = [d for d in dims if not 0 <= d < channels]
    if bad:
        raise UsageError(f"--dims {bad[0]}: out of range; this model's latent channels are "
                         f"0 to {channels - 1}")
    sample_in = run.domain.load(Path(input_path))
    x = run.encoders[side].encode(sample_in)[None]
    mu, _ = translator.encode_latent(x.to(run.device), side)
    size = tuple(x.shape[-2:])
    shifts = torch.linspace(-k, k, steps)
    out = Path(out)
    written, rows = [], []
    for d in dims:
        z = mu.repeat(steps, 1, 1, 1)
        z[:, d] += (shifts * std[d]).to(z)[:, None, None]
        tiles = []
        for batch in z.split(BATCH):
            tiles += list(translator.decode_latent(batch, side, size=size).float().cpu())
        rows.append(tiles)
        written += _write_preview(run, [tiles], side, out / f"dim{d:02d}")
    if _one_picture(run.domain):
        written += _write_preview(run, rows, side, out / "all")
    return written


# -- outlier scores -----------------------------------------------------------------------------
@dataclasses.dataclass
class InputScore:
    path: Path
    score: float  # negative ELBO per input element; higher = less like the training data
    percentile: float  # share of the side's training examples that score lower, in percent
    flagged: bool  # above the threshold: "unlike the training data"


@dataclasses.dataclass
class ScoreReport:
    side: str
    threshold: float
    scores: list[InputScore] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "threshold": self.threshold,
            "inputs": [{"file": str(s.path), "score": s.score, "percentile": s.percentile,
                        "flagged": s.flagged} for s in self.scores],
            "failed": [{"file": str(p), "problem": problem} for p, problem in self.failed],
        }


def score(run: Run, inputs: Iterable[Path | str], side: str = "a",
          on_file: Callable[[Path, InputScore | None, str | None], None] | None = None
          ) -> ScoreReport:
    """Score files and folders (recursively) against ``side``'s training data. A file that
    cannot be read is reported (``on_file(path, None, problem)``) and skipped; the rest are
    scored (``on_file(path, result, None)``)."""
    translator = require_latent(run)
    _check_side(side)
    stats = _training_scores(run, side)
    scorer = _Scorer(run, translator, side, stats[side], stats.get("threshold"))
    report = ScoreReport(side, scorer.threshold)
    on_file = on_file or (lambda *_: None)
    for path in _files(run.domain, inputs):
        try:
            if not run.domain.handles(path):
                kinds = " ".join(run.domain.extensions)
                raise BadInputError(path, f"not a {run.domain.name} file ({kinds})")
            result = scorer(path, run.domain.load(path))
        except BadInputError as err:
            report.failed.append((path, err.problem))
            on_file(path, None, err.problem)
            continue
        report.scores.append(result)
        on_file(path, result, None)
    return report


def outlier_check(run: Run, side: str) -> Callable[[Path, Sample], None] | None:
    """For ``convert``: a function ``(path, sample)`` that logs ``<file>: unlike the training
    data (score S, above P% of the training examples)`` for an input of ``side`` above the
    threshold; None when the run has no latent space or no training scores."""
    if not isinstance(run.translator, LatentTranslator):
        return None
    try:
        stats = load_training_statistics(run.path)
    except StyletxError as err:  # a damaged statistics file must not stop a conversion
        log.warning("%s; inputs are not checked against the training data", err)
        return None
    if stats is None or not isinstance(stats.get(side), dict) or not stats[side].get("scores"):
        return None
    scorer = _Scorer(run, run.translator, side, stats[side], stats.get("threshold"))

    def check(path: Path, sample: Sample) -> None:
        result = scorer(path, sample)
        if result.flagged:
            log.warning("%s: unlike the training data (score %.3f, above %.0f%% of the training "
                        "examples)", path, result.score, result.percentile)

    return check


class _Scorer:
    """One input -> its ``InputScore`` against a side's training scores, with the threshold
    rule the run was trained with (``latent.json``; this version's when absent)."""

    def __init__(self, run: Run, translator: LatentTranslator, side: str,
                 stats: dict[str, Any], rule: dict[str, float] | None = None):
        self.run, self.translator, self.side = run, translator, side
        self.training = sorted(float(s) for s in stats["scores"])
        rule = rule if isinstance(rule, dict) else {}
        self.threshold = threshold_for(self.training,
                                       float(rule.get("quantile", THRESHOLD_QUANTILE)),
                                       float(rule.get("margin", THRESHOLD_MARGIN)))

    def __call__(self, path: Path, sample: Sample) -> InputScore:
        run = self.run
        prepared = run.domain.prepare_for_training(sample, run.config.train.size)
        x = run.encoders[self.side].encode(prepared)
        value = _scores(self.translator, [x], self.side, run.domain.chunk_frames,
                        run.device)[0]
        return InputScore(path, value, percentile(self.training, value),
                          value > self.threshold)


def _scores(translator: LatentTranslator, items: list[torch.Tensor], side: str,
            chunk: int | None, device: Any) -> list[float]:
    """``negative_elbo`` of each ``(C, H, W)`` tensor: one forward pass per batch of pieces of
    one shape; a tensor wider than ``chunk`` is cut into chunks (``_pieces``) and scored as the
    width-weighted mean of its chunks."""
    owners, pieces, weights = [], [], []
    for i, x in enumerate(items):
        for piece, weight in _pieces(x, chunk):
            owners.append(i)
            pieces.append(piece)
            weights.append(weight)
    total, covered = [0.0] * len(items), [0] * len(items)
    for batch, indices in _batches(pieces):
        values = translator.negative_elbo(batch.to(device), side).float().cpu().tolist()
        for j, value in zip(indices, values):
            total[owners[j]] += value * weights[j]
            covered[owners[j]] += weights[j]
    return [t / w for t, w in zip(total, covered)]


def _pieces(x: torch.Tensor, chunk: int | None) -> list[tuple[torch.Tensor, int]]:
    """``x`` whole, or cut along W into chunks of ``chunk`` side by side (the last one ending
    at the end, overlapping the one before), each with the number of frames it alone covers."""
    width = x.shape[-1]
    if not chunk or width <= chunk:
        return [(x, width)]
    starts = chunk_starts(width, chunk, chunk)
    covers = [chunk] * (len(starts) - 1) + [width - (starts[-2] + chunk)]
    return [(x[..., s : s + chunk], cover) for s, cover in zip(starts, covers)]


def _batches(items: list[torch.Tensor]) -> Iterable[tuple[torch.Tensor, list[int]]]:
    """Batches of at most BATCH tensors of one shape, as float32 ``(N, C, H, W)``, each with
    the indices of its tensors in ``items``."""
    for indices in group_by_shape(items).values():
        for start in range(0, len(indices), BATCH):
            part = indices[start : start + BATCH]
            yield torch.stack([items[i] for i in part]).float(), part


def _files(domain: Domain, inputs: Iterable[Path | str]) -> list[Path]:
    """Every file named, and every file of the domain's kinds inside the folders named."""
    files = []
    for item in map(Path, inputs):
        if not item.exists():
            raise UsageError(f"{item}: no such file or folder")
        if item.is_dir():
            found = [f for f, _ in expand_inputs([item]) if domain.handles(f)]
            if not found:
                log.warning("no %s files in %s", domain.name, item)
            files += found
        else:
            files.append(item)
    if not files:
        raise UsageError(f"no {domain.name} files to score in the given inputs")
    return files


# -- writing ------------------------------------------------------------------------------------
def _one_picture(domain: Domain) -> bool:
    """Does the domain's preview write one picture only (the default), so that any grid of
    rows can be written through it?"""
    return type(domain).save_preview is Domain.save_preview


def _write_preview(run: Run, rows: list[list[torch.Tensor]], side: str, stem: Path) -> list[Path]:
    """``rows`` of ``side``'s tensors through the domain's ``save_preview``; the files it wrote."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    started = time.time_ns() - 1_000_000_000  # coarse file-system clocks
    encoders = [[run.encoders[side]] * len(row) for row in rows]
    run.domain.save_preview(rows, encoders, stem)
    return sorted(p for p in stem.parent.iterdir()
                  if p.is_file() and (p.stem == stem.name or p.name.startswith(stem.name + "-"))
                  and p.stat().st_mtime_ns >= started)
