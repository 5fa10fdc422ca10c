"""Quality measures for a task with a known answer."""

from __future__ import annotations

import numpy as np

# SSIM settings of Wang et al. (2004), as in scikit-image's ``gaussian_weights=True``.
__all__ = ["psnr", "ssim", "SSIM_RADIUS", "SSIM_SIGMA"]

SSIM_SIGMA = 1.5  # pixels: the Gaussian window's standard deviation
SSIM_RADIUS = 5  # the window is truncated to 2 * 5 + 1 = 11 pixels (3.5 sigma)
SSIM_K1, SSIM_K2 = 0.01, 0.03  # stabilisers: C1 = (K1 peak)^2, C2 = (K2 peak)^2


def psnr(x: np.ndarray, y: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB between arrays of values in [0, peak]."""
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def ssim(x: np.ndarray, y: np.ndarray, peak: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004) of two images of values in [0, peak].

    Local means, variances and the covariance are weighted by an 11 x 11 Gaussian window
    (sigma 1.5 pixels, normalised to sum 1; population, not sample, statistics), and
    ``SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 +
    sigma_y^2 + C2))`` with ``C1 = (0.01 peak)^2`` and ``C2 = (0.03 peak)^2``. The result is the
    mean of this map over the *valid* positions, those whose window lies wholly inside the
    image (no padding), and over the channels. This is what scikit-image's
    ``structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=peak)`` computes (its reflect-padded border is
    cropped before the mean), to rounding (measured within 2e-16).

    Args:
        x, y: images of equal shape ``(H, W)`` or ``(H, W, C)``, ``H, W >= 11``; any real dtype
            (computed in float64).
        peak: the value range (1 for [0, 1] images, 255 for 8-bit ones).

    Returns:
        SSIM, at most 1 (identical images); 0 means no structural likeness, negative values
        anti-correlation.

    Raises:
        ValueError: shapes differ, are not 2-D or 3-D, smaller than the window, a non-finite
            value, or ``peak <= 0``.
    """
    from scipy.ndimage import correlate1d

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ssim needs images of equal shape, got {x.shape} and {y.shape}")
    if x.ndim not in (2, 3):
        raise ValueError(f"ssim needs images of shape (H, W) or (H, W, C), got {x.shape}")
    size = 2 * SSIM_RADIUS + 1
    if min(x.shape[:2]) < size:
        raise ValueError(f"ssim needs images of at least {size} x {size} pixels, "
                         f"got {x.shape[0]} x {x.shape[1]}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("ssim: the images contain NaN or infinite values")
    if not peak > 0:
        raise ValueError(f"peak must be positive, got {peak}")

    offsets = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1)
    window = np.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    window /= window.sum()
    inner = (slice(SSIM_RADIUS, -SSIM_RADIUS),) * 2  # the valid positions

    def local_mean(a: np.ndarray) -> np.ndarray:
        # Separable Gaussian over the two image axes; the padding only reaches the cropped rim.
        for axis in (0, 1):
            a = correlate1d(a, window, axis=axis, mode="reflect")
        return a[inner]

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
                / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
    return float(ssim_map.mean())
