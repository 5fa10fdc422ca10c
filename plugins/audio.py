"""The audio domain: speech and other recordings as mono waveforms.

Reads WAV, FLAC, OGG and MP3 with soundfile (libsndfile), falling back to librosa (audioread)
for what soundfile cannot decode; stereo is mixed to mono. The sample keeps its own rate;
encoders resample to theirs. Writes WAV or FLAC (the input's container when it is one of those,
else WAV), limited to [-1, 1] by scaling rather than clipping.
"""

from __future__ import annotations

import dataclasses
import string
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import styletx
from styletx.audio import AudioSample

TRIM_TOP_DB = 40.0  # trailing/leading parts this far below the peak count as silence
SILENCE_PEAK = 1e-4  # a file whose peak is below this (-80 dBFS) is pure silence
WRITABLE = {".wav": "WAV", ".flac": "FLAC"}


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


METRIC_RATE = 22050  # Hz: evaluation measures every wave at this rate


def _resampled(sample: AudioSample, rate: int) -> np.ndarray:
    import librosa

    if sample.rate == rate:
        return sample.wave
    return librosa.resample(sample.wave, orig_sr=sample.rate, target_sr=rate)


class AudioDomain(styletx.Domain):
    """Audio files read with soundfile (librosa as the fallback), written as WAV or FLAC."""

    name = "audio"
    extensions = (".wav", ".flac", ".ogg", ".mp3")
    flip_augment = False  # speech reversed in time is not speech
    chunk_frames = 256  # conversion works on ~3 s chunks (at 22.05 kHz, hop 256) ...
    chunk_overlap = 32  # ... cross-faded over ~0.37 s
    pairs_by_time = True  # parallel utterances differ in pace: align them by DTW
    metrics = {"mcd_db": "lower", "f0_rmse_cents": "lower"}

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

    def describe(self, samples: Sequence[AudioSample]) -> str:
        seconds = sum(s.seconds for s in samples)
        return f"{len(samples)} usable audio file(s), {seconds / 60:.1f} min after trimming silence"

    def default_encoder(self, samples: Sequence[AudioSample]) -> str:
        return "mel"

    def compare(self, converted: AudioSample, target: AudioSample) -> dict[str, float]:
        """Mel-cepstral distortion and log-F0 RMSE (cents) against the target saying the same
        words, after DTW alignment (``styletx.audio.metrics``). Both are measured at
        ``METRIC_RATE`` (MCD depends on the rate), so scores of inputs, outputs and models at
        other rates compare. An F0 RMSE that cannot be measured (no frame voiced in both) is
        NaN."""
        from styletx.audio.metrics import log_f0_rmse, mcd

        x, y = (_resampled(s, METRIC_RATE) for s in (converted, target))
        result = {"mcd_db": mcd(x, y, METRIC_RATE)}
        try:
            result["f0_rmse_cents"] = log_f0_rmse(x, y, METRIC_RATE)
        except ValueError:
            result["f0_rmse_cents"] = float("nan")
        return result

    def prepare_for_training(self, sample: AudioSample, size: int) -> AudioSample:
        """Leading and trailing silence trimmed (it would teach the model nothing)."""
        import librosa

        wave, _ = librosa.effects.trim(sample.wave, top_db=TRIM_TOP_DB)
        return dataclasses.replace(sample, wave=np.ascontiguousarray(wave))

    def training_crop(self, size: int) -> tuple[int | None, int]:
        return None, size  # every frequency bin, ``size`` frames

    def save_preview(self, rows, encoders, stem: Path) -> None:
        """Spectrogram pictures (low frequencies at the bottom) as ``stem.png`` and the audio of
        every tile as ``stem-<row><col>.wav``, rows lettered a, b, c, ... (in a training preview
        ``-a1`` is A translated to B)."""
        from styletx.image.previews import save_grid

        # Normalised log spectrograms span about +-3 standard deviations: fit them to [-1, 1].
        save_grid([[t.flip(-2) / 3 for t in row] for row in rows], stem.with_suffix(".png"))
        for side, row, row_encoders in zip(string.ascii_lowercase, rows, encoders):
            for col, (tensor, encoder) in enumerate(zip(row, row_encoders)):
                clip = stem.with_name(f"{stem.name}-{side}{col}.wav")
                self.save(encoder.decode(tensor.float().cpu()), clip)


# -----------------------------------------------------------------------------
# the encoders: normalised log spectrograms, inverted by Griffin-Lim

FEATURE_DEFAULTS = {
    "rate": 22050,  # Hz; every sample is resampled to this
    "n_fft": 1024,  # STFT size (46 ms at 22.05 kHz)
    "hop": 256,  # STFT hop (11.6 ms): one spectrogram frame
    "n_mels": 80,  # mel bins (mel encoder only)
    "fmin": 0.0,  # lowest mel frequency in Hz
    "fmax": None,  # highest mel frequency in Hz; None = rate / 2
    "log_floor": 1e-5,  # magnitudes are clamped here before the log
    "gl_iters": 32,  # Griffin-Lim iterations when decoding
}


class SpectrogramEncoder(styletx.Encoder):
    """Waveform <-> normalised log-magnitude spectrogram ``(1, bins, frames)``.

    Normalisation is per frequency bin, with the mean and standard deviation fitted on one
    training folder, so each voice keeps its own statistics: a converted spectrogram is
    de-normalised by the *target* side's encoder (the one that decodes it).
    """

    domain = "audio"
    channels = 1
    decodes_on_device = True  # Griffin-Lim on the GPU when converting on one

    def __init__(self, **params):
        unknown = set(params) - set(FEATURE_DEFAULTS)
        if unknown:
            raise styletx.UsageError(f"{self.name} encoder: unknown setting {sorted(unknown)[0]!r}")
        super().__init__(**{**FEATURE_DEFAULTS, **params})
        p = self.params
        if p["hop"] < 1 or p["n_fft"] < p["hop"] or p["rate"] < 1000:
            raise styletx.UsageError(
                f"{self.name} encoder: need rate >= 1000 and n_fft >= hop >= 1, got {p}"
            )
        self.mean = np.zeros(self.bins, np.float32)
        self.std = np.ones(self.bins, np.float32)

    # -- subclass parts: the log spectrogram and its linear magnitude ------------------------
    def log_spectrogram(self, wave: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def linear_magnitude(self, log_spec: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- Encoder interface -------------------------------------------------------------------
    def resample(self, sample: AudioSample) -> np.ndarray:
        return _resampled(sample, self.params["rate"])

    def fit(self, samples: Sequence[AudioSample]) -> None:
        frames = np.concatenate([self.log_spectrogram(self.resample(s)) for s in samples], axis=1)
        self.mean = frames.mean(axis=1).astype(np.float32)
        self.std = np.maximum(frames.std(axis=1), 1e-3).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mean = state["mean"].numpy().astype(np.float32)
        self.std = state["std"].numpy().astype(np.float32)

    def encode(self, sample: AudioSample) -> torch.Tensor:
        log_spec = self.log_spectrogram(self.resample(sample))
        normalised = (log_spec - self.mean[:, None]) / self.std[:, None]
        return torch.from_numpy(normalised.astype(np.float32))[None]

    def decode(self, tensor: torch.Tensor, like: AudioSample | None = None) -> AudioSample:
        return self.decode_batch(tensor[None], [like])[0]

    def decode_batch(self, tensors: torch.Tensor,
                     likes: Sequence[AudioSample | None] | None = None) -> list[AudioSample]:
        """``decode`` of every item of ``(N, 1, bins, frames)`` (``likes``: each one's source),
        with the magnitudes inverted together and one batched Griffin-Lim per output length;
        each item's random initial phase is the one ``decode`` would draw for it alone, so the
        waves equal those of decoding one at a time. Griffin-Lim runs on the tensors' device:
        torch.stft / istft on a GPU, the Numba loop on the CPU."""
        from styletx.audio.dsp import griffinlim

        likes = list(likes) if likes is not None else [None] * len(tensors)
        if len(likes) != len(tensors):
            raise ValueError(f"{len(tensors)} tensors but {len(likes)} likes")
        log_spec = tensors[:, 0].detach().float().cpu().numpy()
        log_spec = log_spec * self.std[:, None] + self.mean[:, None]
        magnitude = self.linear_magnitude(log_spec)
        p = self.params
        groups: dict[int | None, list[int]] = {}
        for i, like in enumerate(likes):
            groups.setdefault(self._length(like, log_spec.shape[-1]), []).append(i)
        waves: list[np.ndarray | None] = [None] * len(likes)
        on_gpu = tensors.device.type != "cpu"
        for length, items in groups.items():
            chosen = magnitude[items]
            if on_gpu:
                chosen = torch.from_numpy(chosen).to(tensors.device)
            batch = griffinlim(chosen, n_fft=p["n_fft"], hop=p["hop"], n_iter=p["gl_iters"],
                               length=length, seed=[0] * len(items))
            if on_gpu:
                batch = batch.cpu().numpy()
            for i, wave in zip(items, batch):
                waves[i] = wave
        return [AudioSample(np.asarray(wave, np.float32), p["rate"], like.format if like else None)
                for wave, like in zip(waves, likes)]

    def _length(self, like: AudioSample | None, frames: int) -> int | None:
        """The output's length in samples: the source's duration when it fits the frame count,
        else None (Griffin-Lim's default, ``(frames - 1) * hop``)."""
        if like is None:
            return None
        p = self.params
        source_length = round(len(like.wave) * p["rate"] / like.rate)
        return source_length if 1 + source_length // p["hop"] == frames else None


class MelEncoder(SpectrogramEncoder):
    """Log-mel spectrogram (80 bins at 22.05 kHz by default), inverted by a clipped mel
    pseudo-inverse and Griffin-Lim."""

    name = "mel"

    @property
    def bins(self) -> int:
        return self.params["n_mels"]

    def _mel_args(self) -> dict:
        p = self.params
        return dict(sr=p["rate"], n_fft=p["n_fft"], n_mels=p["n_mels"], fmin=p["fmin"],
                    fmax=p["fmax"])

    def log_spectrogram(self, wave: np.ndarray) -> np.ndarray:
        from styletx.audio.dsp import mel_filterbank, stft_magnitude

        p = self.params
        mel = mel_filterbank(**self._mel_args()) @ stft_magnitude(wave, p["n_fft"], p["hop"])
        return np.log(np.maximum(mel, p["log_floor"]))

    def linear_magnitude(self, log_spec: np.ndarray) -> np.ndarray:
        from styletx.audio.dsp import mel_to_linear

        p = self.params
        return mel_to_linear(np.exp(log_spec), sr=p["rate"], n_fft=p["n_fft"], fmin=p["fmin"],
                             fmax=p["fmax"])


class StftEncoder(SpectrogramEncoder):
    """Log-magnitude linear spectrogram (n_fft / 2 + 1 bins), inverted by Griffin-Lim."""

    name = "stft"

    @property
    def bins(self) -> int:
        return self.params["n_fft"] // 2 + 1

    def log_spectrogram(self, wave: np.ndarray) -> np.ndarray:
        from styletx.audio.dsp import stft_magnitude

        p = self.params
        return np.log(np.maximum(stft_magnitude(wave, p["n_fft"], p["hop"]), p["log_floor"]))

    def linear_magnitude(self, log_spec: np.ndarray) -> np.ndarray:
        return np.exp(log_spec)


@styletx.hookimpl
def register_domains(register):
    register(AudioDomain)


@styletx.hookimpl
def register_encoders(register):
    register(MelEncoder)
    register(StftEncoder)
