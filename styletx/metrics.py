"""Quality measures for a task with a known answer."""

from __future__ import annotations

import numpy as np


def psnr(x: np.ndarray, y: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB between arrays of values in [0, peak]."""
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)
