"""Debiasing by resampling (``styletx train --balance``), as in DB-VAE.

Amini et al., "Uncovering and Mitigating Algorithmic Bias through Learned Latent Structure"
(2019): every so often, encode each training example, pool its posterior mean over the latent
positions, estimate the density of the examples along each latent dimension with a histogram,
and draw examples with probability inversely proportional to that density, so that rare kinds of
example are seen more often. The paper's weight is a product over the dimensions,

    W(x) proportional to  prod_i 1 / (Q_i(z_i(x)) + smoothing)

(Q_i: the share of examples in x's histogram bin along dimension i). That product treats the
dimensions as independent; pooled latent channels are strongly correlated, so it counts the
same evidence many times and puts almost all the weight on one or two examples. Here the
product's exponent is scaled by the effective number of independent dimensions, the
participation ratio of the latents' correlation matrix, ``(sum l)^2 / sum l^2`` over its
eigenvalues l (D for independent dimensions, where the rule is the paper's; 1 when all move
together):

    log W(x) = d_eff * mean_i -log(Q_i(z_i(x)) + smoothing) + const

Measured on tiny vaegans (300 steps; 38 ``styletx.demo`` scenes and 2 rare images, 5 % of
the data; 32 latent channels, d_eff 5.4-6.2; smoothing 0.001): the rare pair's share of the
weight was 53 % for uniform noise, 14 % for gray scenes, 10 % for random stripes, and 0 % for
very dark scenes (layer norm maps them close to the others: balancing only finds what the
latent separates), with 6-15 effective examples of 40. The authors' reference code takes the
largest inverse density over the dimensions instead; with 40 examples every example is alone in
some bin of some dimension, so that rule stayed near uniform (14 % for noise, 8 % for stripes,
4 % for dark scenes). ``smoothing`` moves the weights towards uniform (0.1: 31 % for noise).

Two additions, measured on real photographs (benchmarks/RESULTS.md, "--balance again"):

- *Flattening* (``flattened``): the weights become ``softmax(t * log W)`` with the largest
  t <= 1 that keeps at least ``min_effective * N`` examples effectively drawn (``1 / sum p^2``;
  training's default: half). The ranking is kept; what it prevents is what the histograms did
  on real photos: all the draws on 3-24 of 109 examples, a few near-black ones among them.
- *ELBO rarity* (``elbo_weights``, ``--balance-by elbo``, the default): the model's negative
  ELBO bounds ``-log p(x)``, so weighting by it is the same inverse-density rule with the
  model's own density in place of per-channel histograms. On real photos it found the rare
  kind (its tiles ranked 0, 1, 6, 10, 16 of 109; the histograms 2, 3, 4, 10, 24) where the
  histograms drew unusual common tiles most, and it cost the common kind nothing beyond the
  seed noise where the histograms cost 3.5 dB on average. Early in training, when the model
  explains nothing well, it favours busy examples instead; its strength is set by the
  flattening floor alone.

Where the rare kind shares the common kind's mapping, neither made a measurable gain in
conversion quality: even drawing it a third of the time (an oracle) did not convert held-out
rare photos better. Where it has a mapping of its own (a split tone among sepia), the ELBO
rule gained 1.6 dB on it in eight seeds of eight and cost the common kind 1.5 dB. The gain and
the cost both come from the target side: its rare examples, drawn more often, teach the
discriminator their look, which the generator then also gives common inputs of similar colour
(with the discriminator judging against uniform draws of the target side, the gain went with
the cost). The same cost came with a rare kind the ELBO found on both sides (a stained
micrograph with its own grade), where the model had learnt the rare kind without help and
balancing gained it 0.3 dB: a GAN matches the target side it is shown, and the re-weighted one
looks more like the rare kind than the common kind's truth does.
"""

from __future__ import annotations

from typing import Any

import torch

from styletx.contract.interfaces import LatentTranslator

BINS = 10  # histogram bins per latent dimension
BALANCE_BY = ("elbo", "latent")  # how rarity is estimated (``sampling_weights``)
ELBO_SHARPEST = 50.0  # the sharpest elbo weighting tried: exp(50 z), z the standardised score


def sampling_weights(translator: LatentTranslator, crops: torch.Tensor, side: str, by: str,
                     smoothing: float, min_effective: float) -> torch.Tensor:
    """``(N,)`` probabilities of drawing each of ``crops`` (its examples' central crops):
    ``by="latent"`` from the density of their pooled latents (``inverse_density_weights``),
    ``by="elbo"`` from the model's negative ELBO (``elbo_weights``)."""
    if by == "elbo":
        return elbo_weights(negative_elbos(translator, crops, side), min_effective)
    return inverse_density_weights(pooled_means(translator, crops, side), smoothing,
                                   min_effective=min_effective)


def negative_elbos(translator: LatentTranslator, crops: torch.Tensor, side: str,
                   batch_size: int = 16) -> torch.Tensor:
    """``(N, C, H, W)`` examples -> ``(N,)`` the model's negative ELBO of each."""
    return _in_batches(lambda batch: translator.negative_elbo(batch, side), crops, batch_size)


def elbo_weights(scores: torch.Tensor, min_effective: float) -> torch.Tensor:
    """``(N,)`` negative ELBOs -> probabilities ``softmax(t * z)``, z the standardised log of
    the scores and t the largest (up to ``ELBO_SHARPEST``) that still spreads the draws over
    ``min_effective * N`` effective examples. The negative ELBO bounds ``-log p(x)`` under
    the model, so drawing by it draws what the model finds least probable, which is the
    inverse-density rule measured by the model itself instead of by histograms; its scale
    is the model's, so the spread of the draws (``min_effective``) sets the strength."""
    logs = (scores.double() + 1e-12).log()
    spread = logs.std() if len(logs) > 1 else logs.new_tensor(0.0)
    if not spread > 0:
        return torch.full_like(logs, 1.0 / len(logs))
    return flattened((logs - logs.mean()) / spread, min_effective * len(logs),
                     upper=ELBO_SHARPEST)


def pooled_means(translator: LatentTranslator, crops: torch.Tensor, side: str,
                 batch_size: int = 16) -> torch.Tensor:
    """``(N, C, H, W)`` examples -> ``(N, latent_channels)`` posterior means averaged over the
    latent positions."""
    return _in_batches(lambda batch: translator.encode_latent(batch, side)[0].float().mean((2, 3)),
                       crops, batch_size)


def _in_batches(per_batch, crops: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``per_batch`` applied to ``crops`` (as float32) ``batch_size`` at a time, the results
    joined on the CPU as float32."""
    return torch.cat([per_batch(crops[start : start + batch_size].float()).float().cpu()
                      for start in range(0, len(crops), batch_size)])


def inverse_density_weights(latents: torch.Tensor, smoothing: float, bins: int = BINS,
                            min_effective: float = 0.0) -> torch.Tensor:
    """``(N, D)`` pooled latents -> ``(N,)`` sampling probabilities (summing to 1) that favour
    examples in sparsely populated regions of the latent space (see the module docstring),
    then flattened until at least ``min_effective * N`` examples are effectively drawn."""
    x = latents.double()
    low, high = x.min(0).values, x.max(0).values
    varying = high > low  # a constant dimension says nothing about rarity
    n = x.shape[0]
    if n < 2 or not varying.any():
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    x, low, high = x[:, varying], low[varying], high[varying]
    index = ((x - low) / (high - low) * bins).long().clamp(0, bins - 1)  # (N, D)
    counts = torch.zeros(x.shape[1], bins, dtype=torch.float64)
    counts.scatter_add_(1, index.T, torch.ones_like(index.T, dtype=torch.float64))
    share = counts.gather(1, index.T).T / n  # each example's bin share, per dimension
    log_weight = effective_dimensions(x) * -torch.log(share + smoothing).mean(1)
    return flattened(log_weight, min_effective * n)


def effective_examples(weights: torch.Tensor) -> float:
    """``1 / sum p^2``: how many examples equally drawn would give the same spread of draws."""
    return float(1.0 / weights.square().sum())


def flattened(log_weight: torch.Tensor, at_least: float, upper: float = 1.0,
              iterations: int = 40) -> torch.Tensor:
    """``softmax(t * log_weight)`` with the largest ``t`` in [0, upper] whose draws still
    spread over ``at_least`` effective examples: the ranking of the examples is kept, only its
    sharpness is capped (t = 0 is uniform; the effective number only falls as t grows, so a
    bisection finds t)."""
    weights = torch.softmax(upper * log_weight, 0)
    if effective_examples(weights) >= at_least:
        return weights
    low, high = 0.0, upper
    for _ in range(iterations):
        middle = (low + high) / 2
        if effective_examples(torch.softmax(middle * log_weight, 0)) >= at_least:
            low = middle
        else:
            high = middle
    return torch.softmax(low * log_weight, 0)


def with_uniform(weights: torch.Tensor, share: float) -> torch.Tensor:
    """Probabilities that follow ``weights`` for ``share`` of the draws and are uniform for the
    rest: every example keeps at least ``(1 - share) / N`` of them, so the common kind is not
    starved while the rare one is drawn more often."""
    return share * weights + (1 - share) / len(weights)


def effective_dimensions(x: torch.Tensor) -> float:
    """The participation ratio ``(sum l)^2 / sum l^2`` of the eigenvalues l of the columns'
    correlation matrix: how many independent directions ``(N, D)`` data really spans."""
    z = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    eigen = torch.linalg.svdvals(z).square()
    return float(eigen.sum().square() / eigen.square().sum())


def describe(weights: torch.Tensor, names: list[str] | None = None,
             most: int = 3) -> dict[str, Any]:
    """How far the sampling is from uniform: the effective number of examples (1 / sum p^2),
    the largest probability relative to uniform, the share drawn from the rarest 5 %, and
    (given the examples' ``names``) the ``most`` most drawn, as [name, times uniform]."""
    n = len(weights)
    top = max(1, round(0.05 * n))
    order = weights.argsort(descending=True)
    summary: dict[str, Any] = {
        "effective_examples": round(effective_examples(weights), 2),
        "max_over_uniform": round(float(weights.max() * n), 2),
        "top5pct_share": round(float(weights[order[:top]].sum()), 4),
    }
    if names is not None:
        summary["most_drawn"] = [[names[i], round(float(weights[i] * n), 2)]
                                 for i in order[:most].tolist()]
    return summary
