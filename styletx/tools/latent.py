"""The latent space of a VAE/GAN run: sampling, traversal and outlier scores.

    run = load_run("runs/s2w-vae")               # a run whose translator is a LatentTranslator
    sample(run, "b", 16, "out/")                 # decode drawn latents: new B-like examples
    traverse(run, "photo.png", [0, 3], "out/")   # walk latent channels 0 and 3 of one input
    report = score(run, ["inbox/"])              # how unlike the training data each input is

The outlier score places an input against its side's training examples on six features:
three statistics of its local structure (``image_statistics``: fine detail, coarse detail,
edge orientation), two of its locally normalised contrast (``contrast_statistics``, after
BRISQUE: the normalised values' mean magnitude and the spread of the local contrast), and the
log of the translator's ``negative_elbo`` (for vaegan its VAE training loss per example:
reconstruction error + KL per element, weighted as in training). At the end of training
``save_training_statistics`` computes the features of the training examples (at most
``STATS_EXAMPLES`` a side) and writes ``RUN/latent.json`` with their mean and spread; an
input's score (``_combined``) is ``-2 log p`` of the stronger of two pieces of evidence: its
structure (the five statistics' tail probabilities combined by Fisher's method) and its
reconstruction (the ELBO's upper tail, counted from ``MEMORISATION_GAP`` training spreads
up): about 1.5 for a typical input, +2 for each factor e of improbability. It is placed
against the training examples' scores (its percentile) and flagged "unlike the training data"
when it exceeds

    threshold = THRESHOLD_MARGIN * (the THRESHOLD_QUANTILE quantile of the training scores)

Why not the negative ELBO alone (what this module used first): measured on real photographs
(benchmarks/latent.py: 64 px tiles of nature photographs, held-out photos against seven kinds
of outlier), it ranked noise and inverted colours well but blurred, JPEG-compressed, flat and
drawn images no better than a coin or the wrong way round (ROC AUC 0.40-0.48 for the tiny
preset; mean 0.60 for the fast one): a VAE reconstructs simple images *better* than the
photographs it was trained on, and the training examples, which it partly memorises, score
below new photographs of the same kind. The structure statistics are two-sided (too little
detail is as unusual as too much) and need no training; the ELBO term is one-sided and catches
what they cannot see (inverted colours: AUC 0.86-0.91). With the three detail statistics and
the ELBO: mean AUC 0.87-0.90, JPEG 0.73; the two contrast statistics raised it to 0.93-0.95,
JPEG 0.90-0.95 (RESULTS.md has the table), flagging 1-5 of 68 held-out photographs. Summed
with the others, though, the ELBO term added to every held-out photograph (the model
reconstructs new photographs about 2 training spreads worse than those it memorised) and held
blur back (AUC 0.81-0.84 for `fast`); taking the stronger of the two kinds of evidence, with
the ELBO counted from that gap up, gives a mean of 0.96 and no kind below 0.89. A run trained
before a feature was added is scored on the features its statistics name, and one trained
before the gap by Fisher's sum over all its features. The rule's
margin was measured on tiny vaegans trained on the generated demo scenes
(tests/test_latent.py's fixture) with the ELBO score.

Inputs are scored at training scale: each is brought there with the domain's
``prepare_for_training`` (images: the shorter side resized to the training load size; audio:
silence trimmed), as the training examples were, and spectrograms longer than the domain's
``chunk_frames`` are scored in chunks (a width-weighted mean), so memory stays bounded.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from styletx.contract.errors import BadInputError, StyletxError, UsageError, not_a, some_of
from styletx.contract.files import check_output_folder
from styletx.contract.interfaces import SIDES, Domain, LatentTranslator, Sample
from styletx.engine.apply import chunk_starts, group_by_shape
from styletx.engine.data import as_paths, expand_inputs
from styletx.engine.model import encoded
from styletx.engine.progress import Progress, log_failure
from styletx.engine.report import save_domain_preview
from styletx.engine.runs import write_json

if TYPE_CHECKING:
    from styletx.engine.convert import Run

log = logging.getLogger("styletx")

STATS = "latent.json"
MAX_RANGE = 10.0  # traverse --range: standard deviations a channel may be walked at most
THRESHOLD_QUANTILE = 0.95  # the training scores' quantile the threshold is built on
THRESHOLD_MARGIN = 1.3  # flagged above this many times that quantile (measured, see above)
ROW = 8  # sample grids: tiles per row
BATCH = 16  # examples scored per forward pass, at most
PASS_PIXELS = 256 * 256 * 4  # ... and elements of a map (pixels; bins x frames) in all: 12
#                              photos at the default preset's 256-px scale took 3.5 GB in one
#                              pass, more than training them (a GPU could run out of memory after
#                              training); this is what a training batch of 4 at 256 px holds
FEATURES = ("fine detail", "coarse detail", "edge orientation", "normalised contrast",
            "contrast spread", "reconstruction")
ONE_SIDED = ("reconstruction",)  # unusual only when high: reconstructing well is not unusual
MEMORISATION_GAP = 2.0  # the reconstruction term counts from this many training spreads up: a
#                         model trained for minutes reconstructs new examples of its kind worse
#                         than the ones it memorised (held-out photographs: 1.9-2.1 spreads)
CONTRAST_WINDOW = 7  # the local mean and spread of contrast_statistics: a 7 x 7 Gaussian window
CONTRAST_SIGMA = 7 / 6  # ... of this standard deviation (BRISQUE's)
CONTRAST_FLOOR = 1 / 255  # added to the local spread: one 8-bit level, flat areas stay finite
EPS = 1e-3  # added before a log: features of flat inputs stay finite
MIN_SPREAD = 1e-3  # the smallest spread of a feature over the training examples
NEIGHBOUR_MAX = 0.99  # the neighbour correlation sample() matches, at most
DEFAULT_DIMS = 4  # channels traversed when none are named
STATS_EXAMPLES = 128  # training examples a side that latent.json is computed from, at most:
#                       each costs about a training step (3 s for a 286 x 381 photo with the
#                       default preset on 2 CPU cores), and 128 give its means, spreads and 95th
#                       percentile closely enough
EFFECT_EXAMPLES = 2  # training examples over which a latent channel's effect is averaged
EFFECT_SIDE = 6  # ... each through its central 6 x 6 latent positions
EFFECT_SHIFT = 2.0  # ... shifted by this many of the channel's standard deviations


# -- training statistics ----------------------------------------------------------------------
def save_training_statistics(run: Path, translator: LatentTranslator,
                             examples: dict[str, list[torch.Tensor]], device: Any,
                             chunk: int | None = None) -> None:
    """Score the encoded training examples ``(C, H, W)`` of each side (at most
    ``STATS_EXAMPLES``, evenly spread) and write ``RUN/latent.json``: per side the mean and
    spread of each typicality feature over the examples (``"typicality"``), the examples'
    sorted outlier scores, the statistics of the posterior means over all examples and latent
    positions (per-channel mean and standard deviation, the Cholesky factor of the channels'
    covariance, the correlation of neighbouring positions: for ``sample``), how much each
    latent channel changes the decoded output (``"channel_effect"``, for ``traverse``) and one
    example's shape.

    Called by ``LatentTranslator.on_trained`` at the end of training, the networks in
    evaluation mode. ``chunk``: examples wider than this many frames are encoded in chunks
    (pass the domain's ``chunk_frames``, as ``score`` and ``convert`` use it)."""
    stats: dict[str, Any] = {}
    started = time.monotonic()
    chosen = {side: _evenly(examples.get(side) or [], STATS_EXAMPLES) for side in SIDES}
    count = sum(map(len, chosen.values()))
    available = sum(len(examples.get(side) or []) for side in SIDES)
    log.info("scoring %s training examples for %s (the outlier check, sample, traverse)",
             count if count == available else f"{count} of the {available} (evenly spread)",
             STATS)
    for side in SIDES:
        if chosen[side]:
            stats[side] = _side_statistics(translator, chosen[side], side, chunk, device)
    stats["threshold"] = {"quantile": THRESHOLD_QUANTILE, "margin": THRESHOLD_MARGIN}
    write_json(Path(run) / STATS, stats)
    log.info("wrote %s in %.0f s", Path(run) / STATS, time.monotonic() - started)


def _side_statistics(translator: LatentTranslator, items: list[torch.Tensor], side: str,
                     chunk: int | None, device: Any) -> dict[str, Any]:
    def progress(what: str) -> Progress:  # a pass over the examples: a bar or log lines
        return Progress(f"{STATS}: {what} of side {side.upper()},", "example(s)", len(items),
                        leave=False)

    with progress("scored the features") as scored:
        features = _features(translator, items, side, chunk, device, scored)
    typicality = {"features": list(FEATURES),
                  "mean": [round(v, 6) for v in features.mean(0).tolist()],
                  "std": [round(v, 6) for v in
                          features.std(0, correction=0).clamp(min=MIN_SPREAD).tolist()],
                  "memorisation_gap": MEMORISATION_GAP}
    with progress("encoded the latents") as latents:
        field = _latent_field(translator, items, side, chunk, device, latents)
    return {
        "typicality": typicality,
        "scores": sorted(_combined(features, typicality).tolist()),
        "latent_mean": _rounded(field["mean"]),
        "latent_std": _rounded(field["std"]),
        "latent_cholesky": _rounded(field["cholesky"]),
        "neighbour_correlation": round(field["neighbour_correlation"], 6),
        "channel_effect": _rounded(channel_effects(translator, items, side, field["std"],
                                                   device)),
        "shape": list(items[0].shape),
    }


def _evenly(items: list[torch.Tensor], most: int) -> list[torch.Tensor]:
    """At most ``most`` of ``items``, evenly spread over the list (the same ones every time)."""
    if len(items) <= most:
        return items
    return [items[i * len(items) // most] for i in range(most)]


def _latent_field(translator: LatentTranslator, items: list[torch.Tensor], side: str,
                 chunk: int | None, device: Any,
                 progress: Progress | None = None) -> dict[str, Any]:
    """The posterior means' statistics over every example and latent position: per-channel
    mean and standard deviation, the Cholesky factor of the channels' covariance, and the
    correlation of neighbouring positions (all channels together): what ``sample`` needs to
    draw latents that vary as the training data's do."""
    channels = translator.latent_channels
    total = torch.zeros(channels, dtype=torch.float64)
    outer = torch.zeros(channels, channels, dtype=torch.float64)
    neighbours, pairs, count = torch.zeros(channels, dtype=torch.float64), 0, 0
    owners, pieces, _ = _all_pieces(items, chunk)
    finished = _example_counter(owners, progress)
    for batch, indices in _batches(pieces):
        mu, _ = translator.encode_latent(batch.to(device), side)
        finished(indices)
        mu = mu.double().cpu()
        flat = mu.transpose(0, 1).flatten(1)  # (channels, N * h * w)
        total += flat.sum(1)
        outer += flat @ flat.T
        count += flat.shape[1]
        for near in ((mu[..., 1:, :], mu[..., :-1, :]), (mu[..., :, 1:], mu[..., :, :-1])):
            neighbours += (near[0] * near[1]).sum((0, 2, 3))
            pairs += near[0][:, 0].numel()
    mean = total / count
    cov = outer / count - mean[:, None] * mean[None]
    variance = cov.diagonal().clamp(min=0)
    jitter = 1e-6 * float(variance.mean()) + 1e-12  # a channel the model never uses
    cholesky = torch.linalg.cholesky(cov + jitter * torch.eye(channels, dtype=torch.float64))
    autocovariance = (neighbours / max(pairs, 1) - mean.square()).sum()
    return {"mean": mean, "std": variance.sqrt(), "cholesky": cholesky,
            "neighbour_correlation": float((autocovariance / variance.sum().clamp(min=1e-12))
                                           .clamp(0, NEIGHBOUR_MAX))}


def channel_effects(translator: LatentTranslator, items: list[torch.Tensor], side: str,
                    std: torch.Tensor, device: Any) -> list[float]:
    """How much each latent channel d changes what the decoder makes: the mean absolute
    difference between decoding z and z + EFFECT_SHIFT * std_d on channel d's whole map, over
    up to EFFECT_EXAMPLES training examples (z: their posterior means, at most EFFECT_SIDE x
    EFFECT_SIDE central latent positions, as the decoder is convolutional; so the cost stays
    small for wide latents). A channel with a large spread can be one the decoder ignores, so
    this, not the spread, orders ``traverse``'s default channels."""
    channels = translator.latent_channels
    effects = torch.zeros(channels, dtype=torch.float64)
    chosen = items[:: max(1, len(items) // EFFECT_EXAMPLES)][:EFFECT_EXAMPLES]
    for x in chosen:
        mu, _ = translator.encode_latent(x[None].float().to(device), side)
        mu = _central(mu, EFFECT_SIDE)
        z = mu.repeat(channels + 1, 1, 1, 1)  # row d + 1 shifts channel d; row 0 is z itself
        rows = torch.arange(channels)
        z[rows + 1, rows] += EFFECT_SHIFT * std.to(z)[:, None, None]
        out = torch.cat([translator.decode_latent(part, side) for part in z.split(BATCH)])
        effects += (out[1:] - out[:1]).abs().flatten(1).mean(1).double().cpu()
    return (effects / len(chosen)).tolist()


def _rounded(values: torch.Tensor | list) -> list:
    """A tensor (or list) as nested lists of floats rounded to 6 digits, for latent.json."""
    values = torch.as_tensor(values, dtype=torch.float64)
    return (values * 1e6).round().div(1e6).tolist()


def _central(z: torch.Tensor, side: int) -> torch.Tensor:
    """The central ``side`` x ``side`` positions of ``(N, C, h, w)`` (all of a smaller one)."""
    h, w = z.shape[-2:]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return z[..., top : top + side, left : left + side]


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
def latent_run(run: Run | Path | str) -> tuple[Run, LatentTranslator]:
    """(the run, loaded when given as its folder, and its latent translator)."""
    from styletx.engine.convert import as_run

    run = as_run(run)
    return run, require_latent(run)


def require_latent(run: Run) -> LatentTranslator:
    """The run's translator, or a usage error when it has no latent space."""
    if not isinstance(run.translator, LatentTranslator):
        raise UsageError(f"the {run.translator.name} model has no latent space (sample, "
                         "traverse and score need a vaegan run)")
    return run.translator


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise UsageError(f"--domain {side!r}: use a or b")


def has_training_statistics(run: Path | str) -> bool:
    """Does ``RUN/latent.json`` hold both sides' training scores?"""
    try:
        stats = load_training_statistics(run)
    except StyletxError:
        return False
    return stats is not None and all(_side_scores(stats, side) for side in SIDES)


def _side_scores(stats: dict[str, Any] | None, side: str) -> list | None:
    if stats is None or not isinstance(stats.get(side), dict):
        return None
    return stats[side].get("scores") or None


def _training_scores(run: Run, side: str) -> dict[str, Any]:
    stats = load_training_statistics(run.path)
    if not _side_scores(stats, side):
        raise StyletxError(f"{run.path}: no training scores ({_no_statistics(stats)})")
    return stats


def _no_statistics(stats: dict[str, Any] | None, scores: bool = True) -> str:
    """Why a run lacks training statistics, and what writes them: ``scores`` are what the
    train command completes; the rest only a run of a newer version has."""
    if stats is not None and not scores:
        return f"{STATS} has no such statistics: an older version trained the run"
    return (f"{STATS} is {'missing' if stats is None else 'incomplete'}: it is written when "
            "training finishes; the same train command writes it")


# -- sampling -----------------------------------------------------------------------------------
def sample(run: Run | Path | str, side: str, n: int, out: Path | str, seed: int = 0,
           size: int | None = None, prior: bool = False) -> list[Path]:
    """Decode ``n`` drawn latents with ``side``'s decoder and write them through the domain's
    preview, 8 per row (more above 8 x 26: at most 26 rows; images: one grid
    ``OUT/samples.png``; audio: spectrograms in ``OUT/samples.png`` and a clip per tile,
    ``OUT/samples-a0.wav`` ...). Each latent has the shape of a training crop's, or with
    ``size`` of a crop of that size as ``train --size`` means it (images: ``size`` pixels
    square; audio: ``size`` frames).

    Latents are drawn from a Gaussian field fitted to the training posteriors (``latent_draws``)
    when ``latent.json`` has one; from the prior N(0, I) with ``prior`` or for older runs.
    Returns the written files."""
    run, translator = latent_run(run)
    _check_side(side)
    if n < 1:
        raise UsageError(f"-n must be at least 1 (got {n})")
    height, width = _crop_shape(run, side, size)
    # The latent of a crop of that shape (exact for any padding or stride the model uses).
    probe = torch.zeros(1, translator.channels[side], height, width)
    mu, _ = translator.encode_latent(probe.to(run.device), side)
    generator = torch.Generator().manual_seed(seed)
    saved = load_training_statistics(run.path)
    stats = (saved or {}).get(side) or {}
    from_prior = prior or "latent_cholesky" not in stats
    if from_prior and not prior:  # the prior's draws look like texture: say why
        log.warning("drawing from the prior N(0, I), not from the training latents (%s)",
                    _no_statistics(saved, scores=False))

    def drawn(count: int) -> torch.Tensor:
        return (torch.randn((count, *mu.shape[1:]), generator=generator) if from_prior
                else latent_draws(stats, count, tuple(mu.shape[-2:]), generator))

    tiles = []  # drawn and decoded a batch at a time: 1000 latents at once took 10 GB
    with Progress("decoded", "sample(s)", total=n, leave=False) as progress:
        for start in range(0, n, BATCH):
            batch = drawn(min(BATCH, n - start))
            tiles += list(translator.decode_latent(batch.to(run.device), side,
                                                   size=(height, width)).float().cpu())
            progress.update(len(batch))
    # Rows of 8; audio previews letter their rows' clips a to z, so at most 26 rows.
    per_row = max(ROW, -(-n // 26))
    rows = [tiles[i : i + per_row] for i in range(0, n, per_row)]
    out = Path(out)
    earlier = _earlier_outputs(out, r"samples(-.+)?")
    written = _write_preview(run, rows, side, out / "samples")
    _name_earlier_outputs(out, earlier, written)
    return written


def latent_draws(stats: dict[str, Any], n: int, shape: tuple[int, int],
                 generator: torch.Generator) -> torch.Tensor:
    """``n`` latents ``(n, C, h, w)`` from a Gaussian field with the training posteriors'
    statistics (a side of ``latent.json``): the channels' mean and covariance at every
    position, and neighbouring positions correlated as in the training latents (white noise
    smoothed by a Gaussian of width ``sqrt(-1 / (4 ln r))``, whose neighbour correlation is r).

    Measured (benchmarks/latent.py, 64 px nature photographs): a VAE/GAN's latents are not
    N(0, I) — the KL weight is small — and their neighbouring positions correlate (0.82-0.88),
    so the prior's independent positions decode to texture soup. The fitted field brought the
    samples' distance to held-out photos from above that of pixel-shuffled photos to below it
    (see RESULTS.md)."""
    mean = torch.tensor(stats["latent_mean"], dtype=torch.float64)
    cholesky = torch.tensor(stats["latent_cholesky"], dtype=torch.float64)
    r = float(stats.get("neighbour_correlation", 0.0))
    sigma = math.sqrt(-1 / (4 * math.log(r))) if 0 < r < 1 else 0.0
    reach = math.ceil(3 * sigma)
    h, w = shape
    noise = torch.randn((n, len(mean), h + 2 * reach, w + 2 * reach), generator=generator,
                        dtype=torch.float64)
    if reach:
        taps = torch.arange(-reach, reach + 1, dtype=torch.float64)
        kernel = torch.exp(-taps.square() / (2 * sigma**2))
        kernel /= kernel.square().sum().sqrt()  # smoothed white noise keeps unit variance
        flat = noise.reshape(-1, 1, *noise.shape[-2:])
        flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
        noise = F.conv2d(flat, kernel.view(1, 1, -1, 1)).reshape(n, len(mean), h, w)
    z = mean[None, :, None, None] + torch.einsum("ij,njhw->nihw", cholesky, noise)
    return z.float()


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
def traverse(run: Run | Path | str, input_path: Path | str, dims: Sequence[int] | None = None,
             out: Path | str = "traverse", steps: int = 7, k: float = 3.0,
             side: str = "a", full_size: bool = False) -> list[Path]:
    """Encode ``input_path`` with ``side``'s encoder (posterior mean z), then for each latent
    channel d of ``dims`` shift that channel's whole map by ``t * std_d`` for ``steps`` values
    of t from -k to +k, holding the rest, and decode each with the same side's decoder. The
    input is brought to training scale first, as ``score`` brings it (images: the shorter side
    at the training load size), so the tiles show what the model learnt at the scale it learnt
    it, and a 12-megapixel photo does not make a grid of hundreds of megabytes; ``full_size``
    keeps the input's own size. ``std_d`` is the spread of channel d's posterior means over
    the training examples (``latent.json``; 1, the prior's, without it), so every channel
    moves over its own range. ``dims`` None: the DEFAULT_DIMS channels that change the decoded
    output most (``latent.json``'s ``channel_effect``, see ``channel_effects``), largest
    first. Writes ``OUT/dimNN`` previews (one row of ``steps`` tiles each) and, for images,
    ``OUT/all.png`` with a row per channel, each tile titled with its channel and shift;
    returns the written files."""
    run, translator = latent_run(run)
    _check_side(side)
    channels = translator.latent_channels
    if steps < 2:
        raise UsageError(f"--steps must be at least 2 (got {steps})")
    if not 0 < k <= MAX_RANGE:
        raise UsageError(f"--range must be above 0 and at most {MAX_RANGE:g} standard "
                         f"deviations (got {k}; beyond, the decoder meets latents it never saw)")
    saved = load_training_statistics(run.path)
    stats = saved or {}
    std = (stats.get(side) or {}).get("latent_std")
    spread = "standard deviations"
    if not isinstance(std, list) or len(std) != channels:
        std = [1.0] * channels
        spread = f"the prior's unit steps, {_no_statistics(saved, scores=False)}"
    order = "as given" if dims is not None else "by how much they change the output, most first"
    if dims is None:  # the channels that change the output most, largest first
        effect = (stats.get(side) or {}).get("channel_effect")
        if not isinstance(effect, list) or len(effect) != channels:
            effect = std  # a run trained before channel effects were measured
            order = "by spread, widest first" if saved else "in channel order"
        dims = sorted(range(channels), key=lambda d: -effect[d])[:DEFAULT_DIMS]
    dims = list(dict.fromkeys(dims))  # each once, in the order given
    if not dims:
        raise UsageError("--dims: name at least one latent channel")
    bad = [d for d in dims if not 0 <= d < channels]
    if bad:
        raise UsageError(f"--dims {bad[0]}: out of range; this model's latent channels are "
                         f"0 to {channels - 1}")
    sample_in = run.domain.load(Path(input_path))
    if not full_size:
        sample_in = run.domain.prepare_for_training(sample_in, run.config.train.size)
    x = encoded(run.encoders[side], sample_in)[None]
    mu, _ = translator.encode_latent(x.to(run.device), side)
    size = tuple(x.shape[-2:])
    shifts = torch.linspace(-k, k, steps)
    out = Path(out)
    earlier = _earlier_outputs(out, r"dim\d+(-.+)?|all")
    written, rows, titles = [], [], []
    for d in dims:
        z = mu.repeat(steps, 1, 1, 1)
        z[:, d] += (shifts * std[d]).to(z)[:, None, None]
        tiles = []
        for batch in z.split(BATCH):
            tiles += list(translator.decode_latent(batch, side, size=size).float().cpu())
        rows.append(tiles)
        titles.append([f"ch {d}: {t:+.1f}" for t in shifts.tolist()])  # in SDs
        written += _write_preview(run, [tiles], side, out / f"dim{d:02d}")
    if _one_picture(run.domain):
        written += _write_preview(run, rows, side, out / "all", titles)
    _name_earlier_outputs(out, earlier, written)
    log.info("walked latent channel(s) %s (%s), each from -%g to +%g %s",
             ", ".join(map(str, dims)), order, k, k, spread)
    return written


# -- outlier scores -----------------------------------------------------------------------------
@dataclasses.dataclass
class InputScore:
    path: Path
    score: float  # -2 log p of its structure or reconstruction (the module docstring; an
    #               older run's: its negative ELBO per element); higher = less like the
    #               training data
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


def score(run: Run | Path | str, inputs: Iterable[Path | str] | Path | str, side: str = "a",
          on_file: Callable[[Path, InputScore | None, str | None], None] | None = None
          ) -> ScoreReport:
    """Score files and folders (recursively) against ``side``'s training data. A file that
    cannot be read is reported (``on_file(path, None, problem)``; without ``on_file``, a
    warning on the "styletx" logger) and skipped; the rest are scored (``on_file(path,
    result, None)``)."""
    run, translator = latent_run(run)
    _check_side(side)
    stats = _training_scores(run, side)
    scorer = _Scorer(run, translator, side, stats[side], stats.get("threshold"))
    report = ScoreReport(side, scorer.threshold)
    on_file = on_file or log_failure
    for path in _files(run.domain, inputs):
        try:
            if not run.domain.handles(path):
                kinds = " ".join(run.domain.extensions)
                raise BadInputError(path, f"{not_a(run.domain.name)} ({kinds})")
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
        log.warning("%s: inputs are not checked against the training data (%s)", run.path,
                    _no_statistics(stats))
        return None
    try:
        scorer = _Scorer(run, run.translator, side, stats[side], stats.get("threshold"))
    except StyletxError as err:  # e.g. statistics from a newer version: convert all the same
        log.warning("%s; inputs are not checked against the training data", err)
        return None

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
        # A run trained before the typicality score kept the negative ELBO as its score.
        self.typicality = stats.get("typicality")
        if self.typicality:
            _known_features(self.typicality)  # fail here, before any input is read
        rule = rule if isinstance(rule, dict) else {}
        self.threshold = threshold_for(self.training,
                                       float(rule.get("quantile", THRESHOLD_QUANTILE)),
                                       float(rule.get("margin", THRESHOLD_MARGIN)))

    def __call__(self, path: Path, sample: Sample) -> InputScore:
        run = self.run
        prepared = run.domain.prepare_for_training(sample, run.config.train.size)
        x = run.encoders[self.side].encode(prepared)
        features = _features(self.translator, [x], self.side, run.domain.chunk_frames,
                             run.device)
        # An older run's score is the negative ELBO itself (for a recording scored in chunks
        # now the geometric, not the arithmetic, mean of its chunks': a little lower).
        value = (float(_combined(features, self.typicality)[0]) if self.typicality
                 else float(features[0, -1].exp() - EPS))
        return InputScore(path, value, percentile(self.training, value),
                          value > self.threshold)


# -- the outlier score ---------------------------------------------------------------------------
def image_statistics(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, 3)`` statistics of the channel mean's local structure, each a
    log: the mean absolute Laplacian at full and at half resolution (how much fine and coarse
    detail there is: blur lowers the first, noise raises both, flat fields have neither) and
    the ratio of the second differences along the axes to those along the diagonals, which
    says how the edges are oriented: a step edge along an axis counts twice as much along the
    diagonals as along the axes (-0.69), one at 45 degrees the other way round (+0.69), and
    natural detail lies between; the block edges of heavy JPEG compression pull it down."""
    gray = x.float().mean(1, keepdim=True)
    half = F.avg_pool2d(gray, 2, ceil_mode=True) if min(gray.shape[-2:]) >= 2 else gray
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")

    def second(dy: int, dx: int) -> torch.Tensor:  # |second difference| along (dy, dx)
        h, w = padded.shape[-2:]
        ahead = padded[..., 1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx]
        behind = padded[..., 1 - dy : h - 1 - dy, 1 - dx : w - 1 - dx]
        return (ahead + behind - 2 * padded[..., 1:-1, 1:-1]).abs().flatten(1).mean(1)

    def laplacian(of: torch.Tensor) -> torch.Tensor:
        p = F.pad(of, (1, 1, 1, 1), mode="replicate")
        return (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
                - 4 * p[..., 1:-1, 1:-1]).abs().flatten(1).mean(1)

    axes = second(1, 0) + second(0, 1)
    diagonals = second(1, 1) + second(1, -1)
    return torch.stack([(laplacian(gray) + EPS).log(), (laplacian(half) + EPS).log(),
                        (axes + EPS).log() - (diagonals + EPS).log()], 1)


def contrast_statistics(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, 2)`` statistics of the channel mean's local contrast, from the
    natural-scene statistics of no-reference image quality (Mittal et al., "No-reference image
    quality assessment in the spatial domain" (BRISQUE), 2012): each value minus its Gaussian-
    windowed local mean, divided by the local standard deviation. Returned: the log of those
    normalised values' mean magnitude, which blur and noise move (blur turns the heavy-tailed
    distribution of a photograph's normalised values towards a narrower one), and the spread
    of the log local standard deviation over the picture: heavy JPEG compression leaves flat
    blocks beside sharp block edges and widens it, a blur narrows it. Inputs in [-1, 1] (the
    image encoder's range) are read in [0, 1]."""
    gray = (x.float().mean(1, keepdim=True) + 1) / 2
    offsets = torch.arange(CONTRAST_WINDOW, dtype=torch.float32) - CONTRAST_WINDOW // 2
    taps = torch.exp(-offsets.square() / (2 * CONTRAST_SIGMA ** 2))
    taps = taps / taps.sum()

    def local_mean(of: torch.Tensor) -> torch.Tensor:
        pad = CONTRAST_WINDOW // 2
        p = F.pad(of, (pad, pad, pad, pad), mode="replicate")
        return F.conv2d(F.conv2d(p, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))

    mean = local_mean(gray)
    spread = (local_mean(gray.square()) - mean.square()).clamp(min=0).sqrt()
    normalised = (gray - mean) / (spread + CONTRAST_FLOOR)
    log_spread = (spread + EPS).log().flatten(1)
    return torch.stack([(normalised.abs().flatten(1).mean(1) + EPS).log(),
                        log_spread.std(1, correction=0)], 1)


def _features(translator: LatentTranslator, items: list[torch.Tensor], side: str,
              chunk: int | None, device: Any, progress: Progress | None = None) -> torch.Tensor:
    """``(N, len(FEATURES))`` typicality features of each ``(C, H, W)`` tensor: its
    ``image_statistics``, ``contrast_statistics`` and the log of the model's
    ``negative_elbo``; one forward pass per batch of pieces of one shape; a tensor wider than
    ``chunk`` is cut into chunks (``_pieces``) and gets the width-weighted mean of its chunks'
    features."""
    owners, pieces, weights = _all_pieces(items, chunk)
    finished = _example_counter(owners, progress)
    total = torch.zeros(len(items), len(FEATURES), dtype=torch.float64)
    covered = torch.zeros(len(items), 1, dtype=torch.float64)
    for batch, indices in _batches(pieces):
        elbo = translator.negative_elbo(batch.to(device), side).float().cpu()
        values = torch.cat([image_statistics(batch), contrast_statistics(batch),
                            (elbo[:, None] + EPS).log()], 1).double()
        for j, row in zip(indices, values):
            total[owners[j]] += row * weights[j]
            covered[owners[j]] += weights[j]
        finished(indices)
    return total / covered


def _combined(features: torch.Tensor, typicality: dict[str, Any]) -> torch.Tensor:
    """``-2 log p`` of the stronger of two pieces of evidence that an input is unusual: its
    structure (the image statistics, each feature's two-sided normal tail under the training
    examples' spread, too little detail being as unusual as too much, combined by Fisher's
    method into one tail probability) and its reconstruction (the ``ONE_SIDED`` term's upper
    tail, counted from ``memorisation_gap`` training spreads up). About 1.5 for a typical
    input; every factor e of improbability adds 2. Taking the stronger rather than summing
    both keeps the reconstruction term, which every new example of the domain raises, from
    adding to what the structure says: blurred photographs ranked below held-out ones one time
    in five when the two were summed. ``features`` has a column per ``FEATURES``; the ones
    combined are those the run's statistics name (a run trained before a feature was added
    keeps the score its training scores were computed with), and a run whose statistics name
    no gap keeps Fisher's sum over all features, as it was trained with."""
    names = _known_features(typicality)
    columns = features[:, [FEATURES.index(n) for n in names]]
    z = (columns - torch.tensor(typicality["mean"], dtype=torch.float64)) / torch.tensor(
        typicality["std"], dtype=torch.float64)
    one_sided = torch.tensor([n in ONE_SIDED for n in names])
    two_sided_log_p = torch.special.log_ndtr(-z[:, ~one_sided].abs()) + math.log(2)
    gap = typicality.get("memorisation_gap")
    if gap is None:  # a run trained before: Fisher's sum over every feature
        return -2 * (two_sided_log_p.sum(1) + torch.special.log_ndtr(-z[:, one_sided]).sum(1))
    structure = _chi_square_log_tail(-2 * two_sided_log_p.sum(1), two_sided_log_p.shape[1])
    reconstruction = torch.special.log_ndtr(gap - z[:, one_sided]).sum(1)
    return -2 * torch.minimum(structure, reconstruction)


def _chi_square_log_tail(statistic: torch.Tensor, features: int) -> torch.Tensor:
    """The log tail probability of Fisher's ``-2 sum log p`` over ``features`` independent
    p-values (chi-square with ``2 * features`` degrees of freedom; even, so in closed form:
    ``exp(-x/2) sum_{i < features} (x/2)^i / i!``); 0 (p = 1) with no features."""
    if features == 0:
        return torch.zeros_like(statistic)
    half = statistic[:, None] / 2
    i = torch.arange(1, features, dtype=statistic.dtype)
    terms = torch.cat([torch.zeros_like(half), i * half.log() - torch.lgamma(i + 1)], 1)
    return torch.logsumexp(terms, 1) - half[:, 0]


def _known_features(typicality: dict[str, Any]) -> list[str]:
    """The feature names a run's statistics list, or an error naming those this version does
    not compute (a run from a newer version)."""
    names = typicality["features"]
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise StyletxError(f"the run's latent statistics name features this version does not "
                           f"compute: {', '.join(unknown)}")
    return names


def _pieces(x: torch.Tensor, chunk: int | None) -> list[tuple[torch.Tensor, int]]:
    """``x`` whole, or cut along W into chunks of ``chunk`` side by side (the last one ending
    at the end, overlapping the one before), each with the number of frames it alone covers."""
    width = x.shape[-1]
    if not chunk or width <= chunk:
        return [(x, width)]
    starts = chunk_starts(width, chunk, chunk)
    covers = [chunk] * (len(starts) - 1) + [width - (starts[-2] + chunk)]
    return [(x[..., s : s + chunk], cover) for s, cover in zip(starts, covers)]


def _all_pieces(items: list[torch.Tensor], chunk: int | None
                ) -> tuple[list[int], list[torch.Tensor], list[int]]:
    """Every item's ``_pieces``: for each piece, the index of its item, the piece and the
    frames it covers."""
    owners, pieces, covers = [], [], []
    for i, x in enumerate(items):
        for piece, cover in _pieces(x, chunk):
            owners.append(i)
            pieces.append(piece)
            covers.append(cover)
    return owners, pieces, covers


def _example_counter(owners: list[int], progress: Progress | None) -> Callable[[list[int]], None]:
    """Given the indices of pieces just done, advance ``progress`` by the items they finish."""
    left = collections.Counter(owners)

    def finished(indices: list[int]) -> None:
        done = 0
        for j in indices:
            left[owners[j]] -= 1
            done += left[owners[j]] == 0
        if progress is not None and done:
            progress.update(done)
    return finished


def _batches(items: list[torch.Tensor]) -> Iterable[tuple[torch.Tensor, list[int]]]:
    """Batches of tensors of one shape, at most BATCH of them and PASS_PIXELS elements of a
    map in all (at least one tensor), as float32 ``(N, C, H, W)``, each with the indices of
    its tensors in ``items``."""
    for indices in group_by_shape(items).values():
        size = max(1, min(BATCH, PASS_PIXELS // items[indices[0]][0].numel()))
        for start in range(0, len(indices), size):
            part = indices[start : start + size]
            yield torch.stack([items[i] for i in part]).float(), part


def _files(domain: Domain, inputs: Iterable[Path | str] | Path | str) -> list[Path]:
    """Every file named, and every file of the domain's kinds inside the folders named."""
    files = []
    for item in map(Path, as_paths(inputs)):
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
    if domain.one_picture_preview is not None:
        return domain.one_picture_preview
    return type(domain).save_preview is Domain.save_preview


def _earlier_outputs(folder: Path, stems: str) -> set[Path]:
    """The files in ``folder`` whose stem matches ``stems`` (an earlier sample or walk's)."""
    if not folder.is_dir():
        return set()
    return {p for p in folder.iterdir() if p.is_file() and re.fullmatch(stems, p.stem)}


def _name_earlier_outputs(folder: Path, earlier: set[Path], written: list[Path]) -> None:
    """Say which of an earlier command's outputs in ``folder`` were replaced, and which are
    left beside the new ones (an earlier walk of other channels), so neither goes unnoticed."""
    replaced, left = sorted(earlier & set(written)), sorted(earlier - set(written))
    if replaced:
        log.warning("replaced %d file(s) of an earlier run in %s, e.g. %s", len(replaced),
                    folder, replaced[0].name)
    if left:
        log.warning("%s also holds %d file(s) of an earlier run that this one did not write: "
                    "%s", folder, len(left), some_of(p.name for p in left))


def _write_preview(run: Run, rows: list[list[torch.Tensor]], side: str, stem: Path,
                   titles: list[list[str]] | None = None) -> list[Path]:
    """``rows`` of ``side``'s tensors through the domain's ``save_preview`` (with a title per
    tile where it takes them); the files it wrote."""
    check_output_folder(stem.parent)
    stem.parent.mkdir(parents=True, exist_ok=True)
    started = time.time_ns() - 1_000_000_000  # coarse file-system clocks
    encoders = [[run.encoders[side]] * len(row) for row in rows]
    save_domain_preview(run.domain, rows, encoders, stem, titles)
    return sorted(p for p in stem.parent.iterdir()
                  if p.is_file() and (p.stem == stem.name or p.name.startswith(stem.name + "-"))
                  and p.stat().st_mtime_ns >= started)
