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


PIECE_SECONDS = 60.0  # conversion takes longer recordings in pieces of at most this length,
#                       one at a time: memory bounded (18 minutes whole took 1.95 GB), and
#                       progress within the recording
CUT_WINDOW_SECONDS = 15.0  # each cut at the quietest moment of the piece's last this long (a
#                            pause between words), so the pieces' seams fall where little sounds
CUT_FRAME_SECONDS = 0.02  # the loudness of 20 ms frames, every 10 ms, finds that moment
SEAM_FADE_SECONDS = 0.0025  # each side of a seam fades over this (at a pause: no click)


def pieces_at_pauses(sample: AudioSample, seconds: float = PIECE_SECONDS,
                     window: float = CUT_WINDOW_SECONDS) -> list[AudioSample]:
    """``sample`` cut into consecutive pieces of at most ``seconds``, each cut at the quietest
    20 ms of the last ``window`` seconds before its limit; one piece when it is no longer."""
    rate, wave = sample.rate, sample.wave
    longest, search = int(seconds * rate), int(window * rate)
    cuts, start = [0], 0
    while len(wave) - start > longest:
        lo, hi = start + longest - search, start + longest
        start = lo + _quietest(wave[lo:hi], rate)
        cuts.append(start)
    cuts.append(len(wave))
    return [dataclasses.replace(sample, wave=wave[a:b]) for a, b in zip(cuts, cuts[1:])]


def _quietest(wave: np.ndarray, rate: int) -> int:
    """The sample at the middle of ``wave``'s quietest 20 ms frame (frames every 10 ms)."""
    frame = max(int(CUT_FRAME_SECONDS * rate), 2)
    hop = frame // 2
    starts = np.arange(0, max(len(wave) - frame, 0) + 1, hop)
    energy = np.cumsum(np.concatenate([[0.0], wave.astype(np.float64) ** 2]))
    power = energy[starts + frame] - energy[starts]
    return int(starts[int(np.argmin(power))] + frame // 2)


def joined(pieces: list[AudioSample]) -> AudioSample:
    """Converted pieces (``pieces_at_pauses``) end to end as one recording, each seam faded
    out and in over ``SEAM_FADE_SECONDS``: the pieces were made apart, so their waves need not
    meet at a seam, and at a pause the fade is not heard."""
    fade = max(int(SEAM_FADE_SECONDS * pieces[0].rate), 1)
    waves = [piece.wave.copy() for piece in pieces]
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    for before, after in zip(waves, waves[1:]):
        n, m = min(fade, len(before)), min(fade, len(after))
        before[len(before) - n:] *= ramp[::-1][fade - n:]
        after[:m] *= ramp[:m]
    return dataclasses.replace(pieces[0], wave=np.concatenate(waves))
