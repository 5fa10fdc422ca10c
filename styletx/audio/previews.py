"""Labelled spectrogram pictures: time (s) and frequency (Hz) axes, a colour bar in dB, a title
per tile. Drawn with matplotlib (librosa.display for the mel axis), without a screen."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from styletx.audio.encoder import SpectrogramEncoder
from styletx.contract.files import atomic_path
from styletx.contract.interfaces import Encoder

__all__ = ["save_spectrogram_grid", "to_decibels"]

DB_PER_NEPER = 20 / math.log(10)  # natural-log magnitude -> dB
DYNAMIC_RANGE_DB = 80  # shown below the loudest bin of the picture


def to_decibels(tensor: torch.Tensor, encoder: Encoder) -> np.ndarray:
    """``(1, bins, frames)`` as the encoder's normalised log magnitude -> dB (re 1.0) per bin;
    other encoders' tensors are returned as they are (channel 0)."""
    values = tensor.detach().float().cpu().numpy()[0]
    if not isinstance(encoder, SpectrogramEncoder):
        return values
    return (values * encoder.std[:, None] + encoder.mean[:, None]) * DB_PER_NEPER


def save_spectrogram_grid(rows: list[list[torch.Tensor]], encoders: list[list[Encoder]],
                          path: Path, titles: list[list[str]] | None = None) -> None:
    """One PNG of spectrograms laid out as ``rows``, each with axes, a title and a colour bar."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed; set before pyplot is imported
    import matplotlib.pyplot as plt

    cols = max(len(row) for row in rows)
    decibels = [[to_decibels(t, e) for t, e in zip(row, row_enc)]
                for row, row_enc in zip(rows, encoders)]
    top = max(float(v.max()) for row in decibels for v in row)
    span = (top - DYNAMIC_RANGE_DB, top)  # one colour scale for every tile
    figure, axes = plt.subplots(len(rows), cols, figsize=(4.2 * cols, 3.0 * len(rows)),
                                squeeze=False, layout="constrained")
    for r, (row, row_encoders) in enumerate(zip(decibels, encoders)):
        for c, (values, encoder) in enumerate(zip(row, row_encoders)):
            image = _draw(axes[r][c], values, encoder, span)
            axes[r][c].set_title(titles[r][c] if titles else "", fontsize=10)
            figure.colorbar(image, ax=axes[r][c], format="%+.0f dB"
                            if isinstance(encoder, SpectrogramEncoder) else None)
        for c in range(len(row), cols):
            axes[r][c].axis("off")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    plt.close(figure)


def _draw(ax, values: np.ndarray, encoder: Encoder, span: tuple[float, float]):
    if not isinstance(encoder, SpectrogramEncoder):  # unknown axes: bins and frames
        image = ax.imshow(values, origin="lower", aspect="auto", cmap="magma")
        ax.set_xlabel("frame")
        ax.set_ylabel("bin")
        return image
    import librosa.display

    p = encoder.params
    mel = encoder.name == "mel"
    image = librosa.display.specshow(
        values, ax=ax, sr=p["rate"], hop_length=p["hop"], n_fft=p["n_fft"], x_axis="s",
        y_axis="mel" if mel else "linear", fmin=p["fmin"] if mel else None,
        fmax=(p["fmax"] or p["rate"] / 2) if mel else None, cmap="magma",
        vmin=span[0], vmax=span[1])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    return image
