"""Quality measures for voice conversion: mel-cepstral distortion and F0 statistics.

- ``mcd``: how far a converted utterance's spectral envelope (timbre) is from the target
  speaker saying the same words, in dB, after DTW alignment. Lower is closer: the same
  recording gives 0, the synthetic LOW and HIGH voices of ``styletx.audio.synth`` saying the same
  words about 6 dB.
- ``f0_track`` / ``median_f0`` / ``log_f0_stats``: pitch (pYIN) over voiced frames, to check that
  a conversion moved the F0 toward the target speaker's.
- ``log_f0_rmse`` / ``f0_difference_cents``: how far a converted utterance's pitch is from the
  target speaker saying the same words, frame by frame in cents after the same DTW alignment
  as ``mcd``: the same recording gives 0, LOW and HIGH saying the same words about 1200 (an
  octave).

All functions take mono waveforms as 1-D float arrays at ``rate`` Hz and raise ``ValueError``
with a one-line message for input they cannot measure (empty, too short, silent, unvoiced).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.fft import dct

__all__ = ["mcd", "mel_cepstrum", "log_f0_rmse", "f0_difference_cents", "f0_track", "median_f0",
           "log_f0_stats"]

MCD_CONSTANT = 10.0 / np.log(10.0) * np.sqrt(2.0)  # dB; applied to the Euclidean cepstral distance
FMIN, FMAX = 50.0, 600.0  # Hz: the F0 search range, wide enough for low male to child voices
_SILENT_RMS = 1e-5  # a wave whose loudest frame is below this (-100 dBFS) counts as silence


def mel_cepstrum(wave: np.ndarray, rate: int, order: int = 24, n_fft: int = 1024,
                 hop: int = 256, n_mels: int = 80) -> np.ndarray:
    """Mel-cepstral coefficients ``c_0 .. c_order`` per frame.

    The power spectrum (Hann window, ``n_fft``, ``hop``, centred frames) goes through a Slaney
    mel filterbank of ``n_mels`` bands from 0 Hz to ``rate / 2``; the cepstrum is the DCT-II
    of the natural-log *amplitude* in each band, scaled so that
    ``log|X(m)| = c_0 + 2 * sum_k c_k cos(pi k (m + 1/2) / n_mels)`` (i.e. orthonormal DCT
    divided by ``sqrt(2 n_mels)``). That is the scale on which the usual MCD constant
    ``10 / ln 10 * sqrt(2 * sum (dc)^2)`` gives dB. ``c_0`` is the mean log level (energy).

    Args:
        wave: mono samples, shape ``(samples,)``.
        rate: sample rate in Hz.
        order: highest coefficient kept.

    Returns:
        float64 array of shape ``(order + 1, frames)``, ``frames = 1 + samples // hop``.
    """
    import librosa

    wave = _check_wave(wave, rate, n_fft)
    if not 1 <= order < n_mels:
        raise ValueError(f"order must be between 1 and n_mels - 1 = {n_mels - 1}, got {order}")
    power = librosa.feature.melspectrogram(y=wave, sr=rate, n_fft=n_fft, hop_length=hop,
                                           n_mels=n_mels, fmin=0.0, fmax=rate / 2, power=2.0)
    # Floor at -100 dB below the loudest band so that digital silence stays finite.
    floor = max(float(power.max()) * 1e-10, 1e-20)
    log_amplitude = 0.5 * np.log(np.maximum(power, floor))
    return dct(log_amplitude, type=2, norm="ortho", axis=0)[: order + 1] / np.sqrt(2 * n_mels)


def mcd(converted: np.ndarray, target: np.ndarray, rate: int, order: int = 24,
        n_fft: int = 1024, hop: int = 256, silence_db: float = 40.0) -> float:
    """Mel-cepstral distortion in dB between two utterances of the same words.

    Frames quieter than ``silence_db`` below each wave's loudest frame are dropped; the
    remaining ``c_1 .. c_order`` sequences (``c_0``, the energy, is excluded as usual) are
    aligned by DTW with Euclidean frame distance, and the result is
    ``10 / ln 10 * sqrt(2 * sum_k (c_k - c'_k)^2)`` averaged over the aligned frame pairs.

    Args:
        converted, target: mono samples, shape ``(samples,)`` each, any lengths.
        rate: sample rate of both, in Hz.

    Returns:
        MCD in dB (0 for identical inputs). Values depend on the analysis settings and the
        rate (the mel bands span 0 to ``rate / 2``): compare MCDs measured alike.
    """
    distances, _, _ = _align(converted, target, rate, order, n_fft, hop, silence_db)
    return float(MCD_CONSTANT * distances.mean())


def f0_difference_cents(converted: np.ndarray, target: np.ndarray, rate: int,
                        fmin: float = FMIN, fmax: float = FMAX, order: int = 24,
                        n_fft: int = 1024, hop: int = 256, silence_db: float = 40.0,
                        frame_length: int | None = None) -> np.ndarray:
    """Pitch of ``converted`` minus that of ``target`` in cents, per aligned frame pair.

    Both waves are aligned frame by frame exactly as in ``mcd`` (DTW on the mel-cepstra of the
    non-silent frames), their F0 is tracked by pYIN at the same ``hop`` so frame indices agree,
    and each DTW pair whose frames are voiced in both gives ``1200 * log2(f0_c / f0_t)``.
    A frame that DTW maps onto several frames counts once per pair.

    Args:
        converted, target: mono samples, shape ``(samples,)`` each, any lengths.
        rate: sample rate of both, in Hz.
        fmin, fmax: F0 search range in Hz.
        order, n_fft, hop, silence_db: the cepstral analysis and silence threshold of ``mcd``;
            ``hop`` is also the pYIN hop.
        frame_length: pYIN frame in samples (default as in ``f0_track``).

    Returns:
        float64 array of shape ``(pairs,)``, in path order (end to start); positive where the
        converted wave is higher. Its mean is the pitch bias, its RMS ``log_f0_rmse``.

    Raises:
        ValueError: a wave that is empty, too short or silent, or no aligned pair voiced in
            both.
    """
    _, frames_c, frames_t = _align(converted, target, rate, order, n_fft, hop, silence_db)

    def pitch(wave: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        f0, voiced = _pyin(wave, rate, fmin, fmax, frame_length, hop, name)
        # An odd pYIN frame gives one frame fewer than the cepstra when hop divides the
        # length; the centres agree, so the missing last frame counts as unvoiced.
        missing = 1 + len(wave) // hop - len(f0)
        return np.pad(f0, (0, missing), constant_values=np.nan), np.pad(voiced, (0, missing))

    f0_c, voiced_c = pitch(converted, "converted")
    f0_t, voiced_t = pitch(target, "target")
    both = voiced_c[frames_c] & voiced_t[frames_t]
    if not both.any():
        raise ValueError(f"no aligned frames voiced in both waves (F0 search range "
                         f"{fmin:g}-{fmax:g} Hz)")
    return 1200.0 * np.log2(f0_c[frames_c[both]] / f0_t[frames_t[both]])


def log_f0_rmse(converted: np.ndarray, target: np.ndarray, rate: int, fmin: float = FMIN,
                fmax: float = FMAX, order: int = 24, n_fft: int = 1024, hop: int = 256,
                silence_db: float = 40.0, frame_length: int | None = None) -> float:
    """Root-mean-square log-F0 difference in cents between two utterances of the same words.

    Over the DTW-aligned frame pairs voiced in both (see ``f0_difference_cents`` for the
    alignment and the options): ``sqrt(mean((1200 * log2(f0_c / f0_t))^2))``. 0 for identical
    inputs, 1200 for an octave, 100 for a semitone; it counts a constant offset and frame-wise
    contour errors alike (the mean of ``f0_difference_cents`` separates the offset).

    Raises:
        ValueError: a wave that is empty, too short or silent, or no aligned pair voiced in
            both.
    """
    cents = f0_difference_cents(converted, target, rate, fmin, fmax, order, n_fft, hop,
                                silence_db, frame_length)
    return float(np.sqrt(np.mean(cents**2)))


def f0_track(wave: np.ndarray, rate: int, fmin: float = FMIN, fmax: float = FMAX,
             frame_length: int | None = None, hop: int | None = None) -> np.ndarray:
    """F0 in Hz of the voiced frames, by pYIN (``librosa.pyin``).

    Args:
        wave: mono samples, shape ``(samples,)``.
        rate: sample rate in Hz.
        fmin, fmax: F0 search range in Hz.
        frame_length: pYIN frame in samples; default 1024 at 22.05 kHz (46 ms), scaled with the
            rate and at least two periods of ``fmin``.
        hop: frame hop in samples; default ``frame_length // 4``.

    Returns:
        float64 array of shape ``(voiced_frames,)``, in time order; unvoiced frames are left out.

    Raises:
        ValueError: empty, too short, silent, or no voiced frame found.
    """
    f0 = _voiced_f0(wave, rate, fmin, fmax, frame_length, hop)
    if f0.size == 0:
        raise ValueError(f"no voiced frames found (F0 search range {fmin:g}-{fmax:g} Hz)")
    return f0


def median_f0(wave: np.ndarray, rate: int, fmin: float = FMIN, fmax: float = FMAX,
              frame_length: int | None = None, hop: int | None = None) -> float:
    """Median F0 in Hz over the voiced frames (see ``f0_track`` for the options)."""
    return float(np.median(f0_track(wave, rate, fmin, fmax, frame_length, hop)))


def log_f0_stats(waves: np.ndarray | Sequence[np.ndarray], rate: int, fmin: float = FMIN,
                 fmax: float = FMAX, frame_length: int | None = None,
                 hop: int | None = None) -> tuple[float, float]:
    """Mean and standard deviation of natural-log F0 (log Hz) over the voiced frames.

    ``waves`` is one wave, shape ``(samples,)``, or a list of waves, whose voiced frames are
    pooled (a speaker's statistics over a folder); waves without a voiced frame add nothing.
    ``exp(mean)`` is the geometric-mean F0; the difference of two speakers' means is the shift,
    in log Hz, that maps one's pitch onto the other's.

    Raises:
        ValueError: no wave given; a wave that is empty, too short or silent; or no voiced
            frame in any of them.
    """
    if isinstance(waves, np.ndarray) and waves.ndim == 1:
        waves = [waves]
    if len(waves) == 0:
        raise ValueError("no waves given")
    tracks = [_voiced_f0(w, rate, fmin, fmax, frame_length, hop) for w in waves]
    log_f0 = np.log(np.concatenate(tracks))
    if log_f0.size == 0:
        raise ValueError("no voiced frames found in any of the waves")
    return float(log_f0.mean()), float(log_f0.std())


def _voiced_f0(wave: np.ndarray, rate: int, fmin: float = FMIN, fmax: float = FMAX,
               frame_length: int | None = None, hop: int | None = None) -> np.ndarray:
    """pYIN F0 of the voiced frames; empty when there are none."""
    f0, voiced = _pyin(wave, rate, fmin, fmax, frame_length, hop)
    return f0[voiced]


def _pyin(wave: np.ndarray, rate: int, fmin: float, fmax: float, frame_length: int | None,
          hop: int | None, name: str = "wave") -> tuple[np.ndarray, np.ndarray]:
    """pYIN F0 in Hz and voicing of every centred frame, shapes ``(frames,)``: frame ``k`` is
    centred on sample ``k * hop``, ``frames = 1 + (samples - frame_length % 2) // hop``; F0 is
    NaN where ``voiced`` is False."""
    import librosa

    if not 0 < fmin < fmax <= rate / 2:
        raise ValueError(f"need 0 < fmin < fmax <= rate / 2, got fmin={fmin:g}, fmax={fmax:g} "
                         f"at {rate} Hz")
    if frame_length is None:
        frame_length = max(round(1024 * rate / 22050), int(np.ceil(2 * rate / fmin)) + 2)
    elif rate / fmin >= frame_length // 2:
        raise ValueError(f"frame_length {frame_length} is too short for fmin {fmin:g} Hz at "
                         f"{rate} Hz: it must hold two periods ({2 * rate / fmin:.0f} samples)")
    hop = hop or frame_length // 4
    wave = _check_wave(wave, rate, frame_length, name)
    f0, voiced, _ = librosa.pyin(wave, fmin=fmin, fmax=fmax, sr=rate, frame_length=frame_length,
                                 hop_length=hop)
    voiced = voiced & np.isfinite(f0)
    return np.where(voiced, f0, np.nan).astype(np.float64), voiced


def _align(x: np.ndarray, y: np.ndarray, rate: int, order: int, n_fft: int, hop: int,
           silence_db: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DTW alignment of two waves' non-silent frames on ``c_1 .. c_order``.

    Returns ``(distances, frames_x, frames_y)``, each of shape ``(pairs,)``: the Euclidean
    cepstral distance of each aligned pair and its frame indices in each wave's full frame
    grid (``1 + samples // hop`` centred frames, as ``mel_cepstrum`` counts).
    """
    import librosa

    cx, keep_x = _voiced_cepstra(x, rate, order, n_fft, hop, silence_db, "converted")
    cy, keep_y = _voiced_cepstra(y, rate, order, n_fft, hop, silence_db, "target")
    _, path = librosa.sequence.dtw(X=cx, Y=cy, metric="euclidean")
    distances = np.linalg.norm(cx[:, path[:, 0]] - cy[:, path[:, 1]], axis=0)
    return distances, keep_x[path[:, 0]], keep_y[path[:, 1]]


def _voiced_cepstra(wave: np.ndarray, rate: int, order: int, n_fft: int, hop: int,
                    silence_db: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``c_1 .. c_order`` of the frames within ``silence_db`` of the loudest one, and those
    frames' indices."""
    import librosa

    wave = _check_wave(wave, rate, n_fft, name)
    rms = librosa.feature.rms(y=wave, frame_length=n_fft, hop_length=hop)[0]
    keep = rms >= rms.max() * 10 ** (-silence_db / 20)
    cepstra = mel_cepstrum(wave, rate, order, n_fft, hop)[1:, keep]
    if cepstra.shape[1] < 2:
        raise ValueError(f"{name}: fewer than 2 frames above the silence threshold")
    return cepstra, np.flatnonzero(keep)


def _check_wave(wave: np.ndarray, rate: int, min_samples: int, name: str = "wave") -> np.ndarray:
    """The wave as 1-D float64, or a ValueError saying why it cannot be measured."""
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"{name}: expected mono samples of shape (samples,), got {wave.shape}")
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    if wave.size == 0:
        raise ValueError(f"{name}: empty")
    if wave.size < min_samples:
        raise ValueError(f"{name}: too short ({wave.size} samples, {wave.size / rate:.3f} s); "
                         f"need at least {min_samples} samples")
    wave = wave.astype(np.float64)
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"{name}: contains NaN or infinite samples")
    energy = np.concatenate([[0.0], np.cumsum(wave**2)])
    loudest = np.max(energy[min_samples:] - energy[:-min_samples]) / min_samples
    if np.sqrt(max(loudest, 0.0)) < _SILENT_RMS:
        raise ValueError(f"{name}: silent (no {min_samples}-sample frame above -100 dBFS RMS)")
    return wave
