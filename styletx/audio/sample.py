"""The audio sample: what the audio domain loads and saves, and the spectrogram encoders see."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class AudioSample:
    """One recording in memory.

    wave:   float32 ``(samples,)``, mono, nominally in [-1, 1]
    rate:   sample rate in Hz
    format: the source's container ("WAV", "FLAC", "OGG", "MP3", ...), None for arrays
    """

    wave: np.ndarray
    rate: int
    format: str | None = None

    def __post_init__(self):
        if self.wave.ndim != 1:
            raise ValueError(f"wave must be 1-D (mono), got shape {self.wave.shape}")
        if not np.issubdtype(self.wave.dtype, np.floating):
            raise ValueError(f"wave must be floating-point samples in [-1, 1], not "
                             f"{self.wave.dtype} (16-bit PCM: wave / 32768)")
        if not len(self.wave):
            raise ValueError("wave is empty: no samples")
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.rate
