"""Debiasing by resampling (``styletx train --balance``), as in DB-VAE.

Amini et al., "Uncovering and Mitigating Algorithmic Bias through Learned Latent Structure"
(2019): every so often, encode each training example, pool its posterior mean over the latent
positions, estimate the density of the examples along each latent dimension with a histogram,
and draw examples with probability inversely proportional to that density, so that rare kinds of
example are seen more often. Per dimension the weight is ``1 / (density + smoothing)``
(normalised); an example's weight is the largest over the dimensions (the combination used by
the authors' reference code: a product over hundreds of dimensions would put all the weight on a
handful of examples). ``smoothing`` moves the result towards uniform sampling.
"""

from __future__ import annotations

import torch

from .interfaces import LatentTranslator

BINS = 10  # histogram bins per latent dimension


def pooled_means(translator: LatentTranslator, crops: torch.Tensor, side: str,
                 batch_size: int = 16) -> torch.Tensor:
    """``(N, C, H, W)`` examples -> ``(N, latent_channels)`` posterior means averaged over the
    latent positions."""
    out = []
    for start in range(0, len(crops), batch_size):
        mu, _ = translator.encode_latent(crops[start : start + batch_size].float(), side)
        out.append(mu.float().mean(dim=(2, 3)).cpu())
    return torch.cat(out)


def inverse_density_weights(latents: torch.Tensor, smoothing: float,
                            bins: int = BINS) -> torch.Tensor:
    """``(N, D)`` pooled latents -> ``(N,)`` sampling probabilities (summing to 1) that favour
    examples in sparsely populated regions of any latent dimension."""
    n = latents.shape[0]
    weights = torch.zeros(n, dtype=torch.float64)
    for values in latents.double().T:
        low, high = float(values.min()), float(values.max())
        if high <= low:  # a constant dimension says nothing about rarity
            continue
        index = ((values - low) / (high - low) * bins).long().clamp(0, bins - 1)
        density = torch.bincount(index, minlength=bins).double() / n
        density = (density + smoothing) / (density + smoothing).sum()
        p = 1.0 / density[index]
        weights = torch.maximum(weights, p / p.sum())
    if not weights.any():
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    return weights / weights.sum()


def describe(weights: torch.Tensor) -> dict[str, float]:
    """How far the sampling is from uniform: the effective number of examples (1 / sum p^2),
    the largest probability relative to uniform, and the share drawn from the rarest 5 %."""
    n = len(weights)
    top = max(1, round(0.05 * n))
    return {
        "effective_examples": round(float(1.0 / (weights**2).sum()), 2),
        "max_over_uniform": round(float(weights.max() * n), 2),
        "top5pct_share": round(float(weights.sort(descending=True).values[:top].sum()), 4),
    }
