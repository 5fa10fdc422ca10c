"""Image metrics: SSIM against closed forms, a direct per-window computation and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest

from styletx.image.metrics import psnr, ssim

C1, C2 = 0.01**2, 0.03**2  # at peak 1


def smooth_image(shape=(40, 56), seed=0):
    """A structured [0, 1] image: gradients and a ripple plus a little texture."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    texture = np.random.default_rng(seed).random(shape)
    return 0.4 + 0.2 * np.sin(rows / 5.0) * np.cos(cols / 7.0) + 0.2 * cols / shape[1] \
        + 0.1 * texture


def windowed_ssim(x: np.ndarray, y: np.ndarray, peak: float = 1.0) -> float:
    """SSIM written out window by window: an 11 x 11 Gaussian (sigma 1.5) placed at every
    position where it fits inside the image, population statistics, the map averaged."""
    offsets = np.arange(11) - 5
    weights = np.array([[np.exp(-(i * i + j * j) / (2 * 1.5**2)) for j in offsets]
                        for i in offsets])
    weights /= weights.sum()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    values = []
    for top in range(x.shape[0] - 10):
        for left in range(x.shape[1] - 10):
            a, b = x[top:top + 11, left:left + 11], y[top:top + 11, left:left + 11]
            mean_a, mean_b = np.sum(weights * a), np.sum(weights * b)
            var_a = np.sum(weights * (a - mean_a) ** 2)
            var_b = np.sum(weights * (b - mean_b) ** 2)
            cov = np.sum(weights * (a - mean_a) * (b - mean_b))
            values.append((2 * mean_a * mean_b + c1) * (2 * cov + c2)
                          / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_identical_images_give_one():
    x = smooth_image()
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    rgb = np.stack([x, 1 - x, x**2], axis=-1)
    assert ssim(rgb, rgb) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("c1", "c2"), [(0.5, 0.5), (0.2, 0.6), (0.9, 0.1), (0.0, 0.3)])
def test_constant_images_follow_the_closed_form(c1, c2):
    x, y = np.full((16, 20), c1), np.full((16, 20), c2)
    # No variance, no covariance: only the luminance term is left.
    expected = (2 * c1 * c2 + C1) / (c1**2 + c2**2 + C1)
    assert ssim(x, y) == pytest.approx(expected, abs=1e-12)
    # The constants scale with the peak, so the same images on a 0-255 scale agree.
    assert ssim(255 * x, 255 * y, peak=255.0) == pytest.approx(expected, abs=1e-12)


def test_symmetric():
    x = smooth_image(seed=1)
    y = np.clip(x + 0.05 * np.random.default_rng(2).standard_normal(x.shape), 0, 1)
    assert ssim(x, y) == pytest.approx(ssim(y, x), abs=1e-14)


def test_falls_monotonically_with_noise():
    x = smooth_image(seed=3)
    noise = np.random.default_rng(4).standard_normal(x.shape)
    scores = [ssim(x, x + level * noise) for level in (0.0, 0.01, 0.03, 0.1, 0.3)]
    assert scores[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(scores, scores[1:]))
    assert scores[-1] < 0.3


@pytest.mark.parametrize("peak", [1.0, 2.0])
def test_matches_a_direct_per_window_computation(peak):
    rng = np.random.default_rng(5)
    x = rng.random((14, 15)) * peak
    y = np.clip(x + 0.2 * peak * rng.standard_normal(x.shape), 0, peak)
    assert ssim(x, y, peak) == pytest.approx(windowed_ssim(x, y, peak), abs=1e-6)
    # Colour: the mean over the channels.
    xc, yc = np.stack([x, y, x], axis=-1), np.stack([y, y, 0.5 * x], axis=-1)
    expected = np.mean([windowed_ssim(xc[..., c], yc[..., c], peak) for c in range(3)])
    assert ssim(xc, yc, peak) == pytest.approx(expected, abs=1e-6)


def test_matches_scikit_image():
    # Expected values from scikit-image 0.26.0, structural_similarity(x, y,
    # gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=peak
    # [, channel_axis=-1]) on these seeded inputs (scikit-image is not a dependency).
    rng = np.random.default_rng(0)
    x = rng.random((32, 48))
    y = np.clip(x + 0.1 * rng.standard_normal((32, 48)), 0, 1)
    assert ssim(x, y) == pytest.approx(0.9448595253399033, abs=1e-9)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (24, 20, 3))
    y = np.clip(x + rng.normal(0, 40, x.shape), 0, 255)
    assert ssim(x, y, peak=255.0) == pytest.approx(0.8824680999364135, abs=1e-9)


def test_bad_input_raises_value_error():
    x = smooth_image()
    with pytest.raises(ValueError, match="equal shape"):
        ssim(x, x[:, :-1])
    with pytest.raises(ValueError, match="equal shape"):
        ssim(x, np.stack([x] * 3, axis=-1))
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(x[:10], x[:10])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        ssim(x.ravel(), x.ravel())
    with pytest.raises(ValueError, match="NaN"):
        ssim(np.full_like(x, np.nan), x)
    with pytest.raises(ValueError, match="peak"):
        ssim(x, x, peak=0.0)


def test_psnr():
    x = np.zeros((4, 4))
    assert psnr(x, x) == float("inf")
    assert psnr(x, np.full((4, 4), 0.1)) == pytest.approx(20.0)
