"""A base for audio encoders: a normalised log-magnitude spectrogram, decoded by Griffin-Lim.

Subclass ``SpectrogramEncoder`` and give ``name``, ``bins``, ``log_spectrogram`` and
``linear_magnitude`` (the built-in ``mel`` and ``stft`` encoders are such subclasses): fitting
the per-bin statistics on a training folder, saving them with the run, normalising, resampling
to the encoder's rate and the batched Griffin-Lim (on the GPU when converting on one) come
with it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from styletx.audio.sample import AudioSample
from styletx.audio.vocoder import (
    LEVEL_BANDS,
    VOCODERS,
    has_pyworld,
    pitch_statistics,
    with_band_levels,
    world_resynthesis,
)
from styletx.contract.errors import UsageError
from styletx.contract.interfaces import Encoder

log = logging.getLogger("styletx")

NORMALIZE = ("loudness", "peak")  # what a decoded voice is scaled to (convert --normalize)
PEAK = 0.99  # --normalize peak: the loudest sample's magnitude (-0.09 dBFS)
LOUDNESS_FRAME = 0.02  # s: loudness is followed in frames of this length
SILENCE_DB = -50.0  # a source frame this far below its loudest frame counts as silence
LIMITER_WINDOW = 0.04  # s: the peak limiter turns the gain down and up again over this long
BLOCK_SAMPLES = 1 << 20  # match_loudness's samples a pass
SILENCE_PEAK = 1e-4  # a wave whose peak is below this (-80 dBFS) is pure silence
LEVEL_DB = -20.0  # dBFS: every wave is encoded at this speech level (levelled); measured: a
#                   match model fed its held-out sentence 20 dB quieter than its training
#                   recordings gave 186 Hz for the target's 208, 30 dB quieter the source's
#                   100 Hz (the log spectrogram shifts by the gain, and the model never saw that)
LEVEL_RANGE_DB = 40.0  # frames this far below the loud frames do not count in the level


def is_silent(wave: np.ndarray) -> bool:
    """No sample above SILENCE_PEAK (-80 dBFS)."""
    return not wave.size or float(np.abs(wave).max()) < SILENCE_PEAK


def match_loudness(wave: np.ndarray, rate: int, like: AudioSample | None) -> np.ndarray:
    """``wave`` (decoded at ``rate``) at the loudness of its source ``like``: the same RMS
    over the frames where the source sounds, and no louder than the source where it is silent
    (Griffin-Lim leaves a low hiss in pauses). Without a source, or for a silent one, ``wave``
    is returned as it is."""
    if like is None or not wave.size or not like.wave.size:
        return wave
    source = _frame_rms(like.wave, max(1, round(LOUDNESS_FRAME * like.rate)))
    output = _frame_rms(wave, max(1, round(LOUDNESS_FRAME * rate)))
    source = np.interp(np.linspace(0, 1, len(output)), np.linspace(0, 1, len(source)), source)
    sounding = source > source.max() * 10 ** (SILENCE_DB / 20)
    heard = float(np.sqrt(np.mean(output[sounding] ** 2))) if sounding.any() else 0.0
    if heard == 0.0:
        return wave
    gain = float(np.sqrt(np.mean(source[sounding] ** 2))) / heard
    # per frame: the gain, held down to the source's level where the source is silent
    frame_gain = np.where(sounding, gain, np.minimum(gain, source / np.maximum(output, 1e-12)))
    frame_gain = np.convolve(np.pad(frame_gain, 1, mode="edge"), np.ones(3) / 3, "valid")  # no
    #                                                          clicks where the gain changes
    hop = len(wave) / len(output)
    centres = (np.arange(len(output)) + 0.5) * hop
    out = np.empty(len(wave), np.float32)
    for first in range(0, len(wave), BLOCK_SAMPLES):  # an hour-long wave: no float64 copies
        block = slice(first, min(first + BLOCK_SAMPLES, len(wave)))
        out[block] = wave[block] * np.interp(np.arange(block.start, block.stop), centres,
                                             frame_gain)
    return out


def scaled_output(wave: np.ndarray, rate: int, like: AudioSample | None,
                  normalize: str) -> np.ndarray:
    """A decoded wave at its source's loudness (``normalize`` "loudness", the default), or with
    its loudest sample at PEAK ("peak", as styletx did before 0.1: pauses then carry
    Griffin-Lim's hiss at the output's level)."""
    if like is not None and is_silent(like.wave):
        return np.zeros_like(wave)  # Griffin-Lim's hiss, or the model's guess, is no conversion
    if normalize == "peak":
        peak = float(np.abs(wave).max()) if wave.size else 0.0
        return wave * (PEAK / peak) if peak > 0 else wave
    return limit_peaks(match_loudness(wave, rate, like), rate)


def limit_peaks(wave: np.ndarray, rate: int, ceiling: float = PEAK,
                window: float = LIMITER_WINDOW) -> np.ndarray:
    """``wave`` with every sample within ``ceiling``, turned down only around its peaks.

    Scaling a whole recording so that its loudest sample fits made a minute of speech 5-6 dB
    quieter for the sake of a few peaks (Griffin-Lim's waves are peakier than the source at the
    same RMS). Here each sample's gain is the least that any sample within half a ``window``
    (seconds) needs, averaged over a ``window``: that average of minima is never above the
    gain the sample itself needs, so no sample exceeds ``ceiling``, and the gain moves
    smoothly over about a ``window``."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak <= ceiling:
        return wave
    width = 2 * max(1, round(window * rate / 2)) + 1  # odd: both filters centred alike
    needed = np.minimum(1.0, ceiling / np.maximum(np.abs(wave), 1e-12), dtype=np.float32)
    gain = uniform_filter1d(minimum_filter1d(needed, width), width)
    return np.clip(wave * gain, -ceiling, ceiling).astype(np.float32)  # the clip: rounding


def levelled(wave: np.ndarray, rate: int, level_db: float = LEVEL_DB) -> np.ndarray:
    """``wave`` scaled so that its speech level (the RMS over the frames within
    ``LEVEL_RANGE_DB`` of its loud frames: pauses do not count) is ``level_db`` dBFS; a silent
    wave as it is. The loud frames are the 95th percentile of the frame levels, so that a click
    does not set the level."""
    if is_silent(wave):
        return wave
    frames = _frame_rms(wave, max(1, round(LOUDNESS_FRAME * rate)))
    loud = float(np.percentile(frames, 95))
    sounding = frames[frames >= loud * 10 ** (-LEVEL_RANGE_DB / 20)]
    level = float(np.sqrt(np.mean(sounding ** 2)))
    if level == 0.0:
        return wave
    return (wave * (10 ** (level_db / 20) / level)).astype(np.float32)


def _frame_rms(wave: np.ndarray, frame: int) -> np.ndarray:
    """RMS of consecutive frames of ``frame`` samples (the last one partial)."""
    count = -(-len(wave) // frame)
    power = np.empty(count, np.float64)
    rows = max(1, BLOCK_SAMPLES // frame)
    for first in range(0, count, rows):  # in float64 a block at a time: no copy of the wave
        block = np.zeros((min(rows, count - first), frame), np.float64)
        part = wave[first * frame : (first + len(block)) * frame]
        block.reshape(-1)[: len(part)] = part
        power[first : first + len(block)] = np.mean(block**2, axis=1)
    return np.sqrt(power)


def resampled(sample: AudioSample, rate: int) -> np.ndarray:
    """The sample's wave at ``rate`` Hz (librosa's default resampler), itself if already."""
    import librosa

    if sample.rate == rate:
        return sample.wave
    return librosa.resample(sample.wave, orig_sr=sample.rate, target_sr=rate)


def encoding_wave(sample: AudioSample, rate: int, level_db: float | None) -> np.ndarray:
    """The sample's wave at ``rate`` and at the speech level ``level_db`` (``levelled``; None:
    its own level, as runs fitted before it): what a voice encoder analyses, so that a quiet
    recording converts as a loud one does."""
    wave = resampled(sample, rate)
    return wave if level_db is None else levelled(wave, rate, level_db)


def resampled_length(sample: AudioSample, rate: int) -> int:
    """``len(resampled(sample, rate))``, without resampling (librosa's rounding)."""
    return math.ceil(sample.wave.shape[-1] * (rate / sample.rate))


FEATURE_DEFAULTS = {
    "rate": 22050,  # Hz; every sample is resampled to this
    "n_fft": 1024,  # STFT size (46 ms at 22.05 kHz)
    "hop": 256,  # STFT hop (11.6 ms): one spectrogram frame
    "n_mels": 128,  # mel bins (mel encoder only); 80 (before 0.2) smears the harmonics above
    #                 ~1 kHz: round-trip PESQ-WB 2.5 against 3.5 (benchmarks/voice_real.py)
    "fmin": 0.0,  # lowest mel frequency in Hz
    "fmax": None,  # highest mel frequency in Hz; None = rate / 2
    "log_floor": 1e-5,  # magnitudes are clamped here before the log
    "gl_iters": 32,  # Griffin-Lim iterations when decoding
}


class SpectrogramEncoder(Encoder):
    """Waveform <-> normalised log-magnitude spectrogram ``(1, bins, frames)``.

    Normalisation is per frequency bin, with the mean and standard deviation fitted on one
    training folder, so each voice keeps its own statistics: a converted spectrogram is
    de-normalised by the *target* side's encoder (the one that decodes it).
    """

    domain = "audio"
    channels = 1
    NORMALIZE = NORMALIZE  # the choices of ``normalize``
    normalize = "loudness"  # conversion may set it (convert --normalize)
    VOCODERS = VOCODERS  # the choices of ``vocoder``
    vocoder = "griffinlim"  # conversion may set it (convert --vocoder; styletx.audio.vocoder)
    decodes_on_device = True  # Griffin-Lim on the GPU when converting on one
    defaults = FEATURE_DEFAULTS  # the settings a subclass takes, with their defaults
    stft_frames = False  # True where log_spectrogram's frames are stft_magnitude's (n_fft,
    #                      hop): training then refuses too-short files before the fit

    def __init__(self, **params):
        unknown = set(params) - set(self.defaults)
        stale = unknown & set(FEATURE_DEFAULTS)  # saved by runs of an encoder that ignored
        unknown -= stale  # them (the stft encoder's n_mels, fmin and fmax, before 0.3)
        if unknown:
            raise UsageError(f"{self.name} encoder: unknown setting {sorted(unknown)[0]!r}")
        super().__init__(**{**self.defaults,
                            **{k: v for k, v in params.items() if k not in stale}})
        failed = [need for need, met in self._needs() if not met]
        if failed:
            raise UsageError(f"{self.name} encoder: need {'; '.join(failed)}")
        self.mean = np.zeros(self.bins, np.float32)
        self.std = np.ones(self.bins, np.float32)
        self.pitch = None  # [centre, spread] of the voice's log F0, for --vocoder world
        self.level_db = LEVEL_DB  # None: waves encoded at their own level (runs fitted before it)

    def _needs(self) -> list[tuple[str, bool]]:
        """(condition, met) of every setting, so that a bad one (``--encoder-set``) is refused
        by name before any file is read, not deep in a fit or as NaN spectrograms."""
        p = {**FEATURE_DEFAULTS, **self.params}  # (a subclass may not take them all)
        top = p["rate"] / 2 if p["fmax"] is None else p["fmax"]
        return [(f"rate >= 1000 (rate={p['rate']})", p["rate"] >= 1000),
                (f"n_fft >= hop >= 1 (n_fft={p['n_fft']}, hop={p['hop']})",
                 p["n_fft"] >= p["hop"] >= 1),
                (f"n_mels >= 1 (n_mels={p['n_mels']})", p["n_mels"] >= 1),
                (f"0 <= fmin < fmax <= rate / 2 (fmin={p['fmin']}, fmax={p['fmax']})",
                 0 <= p["fmin"] < top <= p["rate"] / 2),
                (f"log_floor > 0 (log_floor={p['log_floor']})", p["log_floor"] > 0),
                (f"gl_iters >= 0 (gl_iters={p['gl_iters']})", p["gl_iters"] >= 0)]

    # -- subclass parts: the bins, the log spectrogram and its linear magnitude --------------
    @property
    def bins(self) -> int:
        """Frequency bins of the spectrogram (H of the tensors)."""
        raise NotImplementedError

    def log_spectrogram(self, wave: np.ndarray) -> np.ndarray:
        """A wave at ``params["rate"]`` -> its log-magnitude spectrogram ``(bins, frames)``."""
        raise NotImplementedError

    def linear_magnitude(self, log_spec: np.ndarray) -> np.ndarray:
        """``(bins, frames)`` log spectrogram -> the linear STFT magnitude ``(n_fft // 2 + 1,
        frames)`` that Griffin-Lim inverts."""
        raise NotImplementedError

    # -- Encoder interface -------------------------------------------------------------------
    def resample(self, sample: AudioSample) -> np.ndarray:
        return resampled(sample, self.params["rate"])

    def width_before_fit(self, sample: AudioSample) -> int | None:
        """Frames of the encoded sample where ``stft_frames`` says they are the centred STFT's
        (``stft_magnitude`` with ``hop``) of the wave at ``rate`` (librosa's resampled length);
        None otherwise: a subclass may frame its spectrogram otherwise."""
        if not self.stft_frames:
            return None
        return 1 + resampled_length(sample, self.params["rate"]) // self.params["hop"]

    def wave_to_encode(self, sample: AudioSample) -> np.ndarray:
        """The sample's wave at the encoder's rate and speech level (``levelled``): the model
        sees every recording at one level, so a quiet one converts as a loud one does (the
        output is brought back to the input's own loudness, ``scaled_output``)."""
        return encoding_wave(sample, self.params["rate"], self.level_db)

    def fit(self, samples: Sequence[AudioSample]) -> None:
        waves = [self.wave_to_encode(s) for s in samples]
        self._fit_statistics(np.concatenate([self.log_spectrogram(w) for w in waves], axis=1))
        self._fit_pitch(waves)

    def _fit_statistics(self, frames: np.ndarray) -> None:
        """Per-bin mean and spread of ``(bins, frames)`` log spectrograms."""
        self.mean = frames.mean(axis=1).astype(np.float32)
        self.std = np.maximum(frames.std(axis=1), 1e-3).astype(np.float32)

    def _fit_pitch(self, waves: Sequence[np.ndarray]) -> None:
        """The voice's pitch statistics for ``--vocoder world``, when pyworld is installed
        (about 1.5 s for two minutes of speech); without them that vocoder estimates the
        pitch from each decoded wave, a little less cleanly (docs/voice.md)."""
        self.pitch = pitch_statistics(waves, self.params["rate"]) if has_pyworld() else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std)}
        if self.level_db is not None:
            state["level_db"] = torch.tensor(self.level_db, dtype=torch.float64)
        if self.pitch is not None:
            state["pitch"] = torch.from_numpy(np.asarray(self.pitch, np.float64))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Statistics; a run fitted without pyworld installed, or by an earlier styletx,
        has no pitch, and one fitted before levelling no level (its recordings are encoded at their
        own level, as it was trained)."""
        self.mean = state["mean"].numpy().astype(np.float32)
        self.std = state["std"].numpy().astype(np.float32)
        self.level_db = float(state["level_db"]) if "level_db" in state else None
        self.pitch = state["pitch"].numpy().astype(np.float64) if "pitch" in state else None

    def encode(self, sample: AudioSample) -> torch.Tensor:
        log_spec = self.log_spectrogram(self.wave_to_encode(sample))
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
        torch.stft / istft on a GPU, the Numba loop on the CPU, there in chunks of about 48 s
        for longer recordings (``griffinlim_in_chunks``: memory bounded)."""
        from styletx.audio.dsp import GL_CHUNK_FRAMES, griffinlim, griffinlim_in_chunks

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
            if not on_gpu and chosen.shape[-1] > GL_CHUNK_FRAMES:  # long: bounded memory
                batch = [griffinlim_in_chunks(m, p["n_fft"], p["hop"], p["gl_iters"], length)
                         for m in chosen]
            else:
                batch = griffinlim(chosen, n_fft=p["n_fft"], hop=p["hop"],
                                   n_iter=p["gl_iters"], length=length, seed=[0] * len(items))
            if on_gpu:
                batch = batch.cpu().numpy()
            for i, wave in zip(items, batch):
                waves[i] = self._vocoded(wave, likes[i], magnitude[i])
        return [AudioSample(scaled_output(np.asarray(wave, np.float32), p["rate"], like,
                                          self.normalize),
                            p["rate"], like.format if like else None)
                for wave, like in zip(waves, likes)]

    def _vocoded(self, wave: np.ndarray, like: AudioSample | None,
                 magnitude: np.ndarray) -> np.ndarray:
        """Griffin-Lim's wave, or with ``vocoder`` "world" and a source to take the pitch
        from, its WORLD re-synthesis with the band levels of the decoded ``magnitude``
        (previews, which have no source, stay Griffin-Lim's)."""
        from styletx.audio.dsp import mel_filterbank

        if self.vocoder != "world" or like is None:
            return wave
        p = self.params
        voice = world_resynthesis(wave, self.resample(like), p["rate"], self.pitch)
        if voice is wave:  # nothing voiced to re-synthesise
            log.warning("too few voiced frames for --vocoder world (a whisper, noise, or under "
                        "50 ms): written as Griffin-Lim decoded it")
            return wave
        bands = mel_filterbank(p["rate"], p["n_fft"], LEVEL_BANDS)
        return with_band_levels(voice, magnitude, np.asarray(bands, np.float64), p["n_fft"],
                                p["hop"])

    def _length(self, like: AudioSample | None, frames: int) -> int | None:
        """The output's length in samples: the source's duration when it fits the frame count,
        else None (Griffin-Lim's default, ``(frames - 1) * hop``)."""
        if like is None:
            return None
        p = self.params
        source_length = round(len(like.wave) * p["rate"] / like.rate)
        return source_length if 1 + source_length // p["hop"] == frames else None
