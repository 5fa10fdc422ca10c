"""The audio domain: speech and other recordings as mono waveforms.

Reads WAV, FLAC, OGG and MP3 with soundfile (libsndfile), falling back to librosa (audioread)
for what soundfile cannot decode; stereo is mixed to mono. The sample keeps its own rate;
encoders resample to theirs. Writes WAV or FLAC (the input's container when it is one of those,
else WAV), limited to [-1, 1] by scaling rather than clipping.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

import styletx

TRIM_TOP_DB = 40.0  # trailing/leading parts this far below the peak count as silence
SILENCE_PEAK = 1e-4  # a file whose peak is below this (-80 dBFS) is pure silence
WRITABLE = {".wav": "WAV", ".flac": "FLAC"}


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
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.rate


def _read(path: Path) -> tuple[np.ndarray, int, str]:
    """(samples, channels) float32, rate, format; raises BadInputError for unusable files."""
    if not path.exists():
        raise styletx.BadInputError(path, "no such file")
    if path.is_dir():
        raise styletx.BadInputError(path, "not a file")
    if path.stat().st_size == 0:
        raise styletx.BadInputError(path, "empty file (0 bytes)")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        fmt = sf.info(path).format
    except sf.LibsndfileError as exc:
        data, rate, fmt = _read_with_librosa(path, exc)
    except (RuntimeError, ValueError, OSError) as exc:
        raise styletx.BadInputError(path, f"corrupt or unreadable audio ({exc})") from None
    return data, rate, fmt


def _read_with_librosa(path: Path, first_error: Exception) -> tuple[np.ndarray, int, str]:
    """The fallback for containers libsndfile does not know (e.g. MP4/AAC via audioread)."""
    import librosa

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns before falling back to audioread
            wave, rate = librosa.load(path, sr=None, mono=True)
    except Exception:  # noqa: BLE001 -- audioread and its backends raise many types
        problem = str(first_error).lower()
        if "format not recognised" in problem or "unknown format" in problem:
            raise styletx.BadInputError(path, "not an audio file (unrecognised format)") from None
        raise styletx.BadInputError(path, f"corrupt or unreadable audio ({first_error})") from None
    return wave[:, None].astype(np.float32), int(rate), path.suffix.lstrip(".").upper()


class AudioDomain(styletx.Domain):
    """Audio files read with soundfile (librosa as the fallback), written as WAV or FLAC."""

    name = "audio"
    extensions = (".wav", ".flac", ".ogg", ".mp3")
    flip_augment = False  # speech reversed in time is not speech

    def load(self, path: Path) -> AudioSample:
        path = Path(path)
        data, rate, fmt = _read(path)
        if data.shape[0] == 0:
            raise styletx.BadInputError(path, "no audio samples in the file")
        wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        if not np.all(np.isfinite(wave)):
            raise styletx.BadInputError(path, "audio contains NaN or infinite samples")
        if np.abs(wave).max() < SILENCE_PEAK:
            raise styletx.BadInputError(path, "pure silence (no signal above -80 dBFS)")
        return AudioSample(np.ascontiguousarray(wave, np.float32), int(rate), fmt)

    def save(self, sample: AudioSample, path: Path) -> None:
        """WAV (float32 is not needed: 16-bit PCM) or FLAC by suffix; never clips."""
        path = Path(path)
        fmt = WRITABLE.get(path.suffix.lower())
        if fmt is None:
            raise styletx.UsageError(f"{path}: audio is written as .wav or .flac")
        wave = sample.wave
        peak = float(np.abs(wave).max()) if wave.size else 0.0
        if peak > 1.0:
            wave = wave / peak  # scale down instead of clipping
        sf.write(path, wave, sample.rate, format=fmt, subtype="PCM_16")

    def output_name(self, source: Path) -> str:
        source = Path(source)
        return source.name if source.suffix.lower() in WRITABLE else source.stem + ".wav"

    def from_array(self, array: np.ndarray) -> AudioSample:
        raise styletx.UsageError(
            "audio arrays need a sample rate: use AudioSample(wave, rate) and Run.convert_sample"
        )

    def to_array(self, sample: AudioSample) -> np.ndarray:
        return sample.wave

    def default_encoder(self, samples: Sequence[AudioSample]) -> str:
        return "mel"

    def prepare_for_training(self, sample: AudioSample, size: int) -> AudioSample:
        """Leading and trailing silence trimmed (it would teach the model nothing)."""
        import librosa

        wave, _ = librosa.effects.trim(sample.wave, top_db=TRIM_TOP_DB)
        return dataclasses.replace(sample, wave=np.ascontiguousarray(wave))

    def training_crop(self, size: int) -> tuple[int | None, int]:
        return None, size  # every frequency bin, ``size`` frames


@styletx.hookimpl
def register_domains(register):
    register(AudioDomain)
