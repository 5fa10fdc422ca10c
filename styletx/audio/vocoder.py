"""WORLD re-synthesis of a decoded voice (``styletx convert --vocoder world``), and the pitch
helpers it shares with the ``world`` encoder plugin. Needs the optional pyworld package
(``pip install 'styletx[world]'``).

Why: a spectrogram model's output, inverted by Griffin-Lim, sounds rough. The roughness is in
the model's magnitudes, not in the phase: Griffin-Lim started from a clean voice's phase
scores no better (benchmarks/RESULTS.md, Voice). So the decoded wave is analysed for its
spectral envelope only (CheapTrick), and WORLD synthesises the voice from that envelope with
the source recording's pitch contour, moved to the output voice's pitch range, and its
aperiodicity: clean harmonics with the model's timbre. CheapTrick's envelope is smoother than
the model's spectrogram, so the result's levels in 40 mel bands are set back to the decoded
spectrogram's (``with_band_levels``): the fine structure is WORLD's, the band levels the
model's.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from styletx.contract.errors import StyletxError

__all__ = ["VOCODERS", "MIN_VOICED", "pyworld", "has_pyworld", "robust_log_f0", "moved_f0",
           "quick_f0", "pitch_statistics", "stretched", "world_resynthesis",
           "with_band_levels"]

VOCODERS = ("griffinlim", "world")  # how a spectrogram voice is turned into sound
F0_FLOOR, F0_CEIL = 71.0, 800.0  # Hz: the pitch search range (the world encoder's defaults)
FRAME_PERIOD = 5.0  # ms between the re-synthesis frames (WORLD's default)
MIN_VOICED = 10  # voiced frames an utterance needs for its own log-F0 spread
MIN_SPREAD = 0.02  # the least log-F0 spread a source counts as having: a sung note or a test
#                   tone is nearly monotone, and moving its spread to a voice's would
#                   multiply its small wobbles into an F0 far outside F0_FLOOR..F0_CEIL
PITCH_SECONDS = 600.0  # the pitch statistics read at most this much of a voice's recordings
LEVEL_BANDS = 40  # mel bands whose levels the re-synthesis takes back from the decoded
#                   spectrogram (benchmarks/RESULTS.md, Voice: 40 kept the MCD within 0.05 dB
#                   of Griffin-Lim's; 128 bands brought back part of the roughness, 24 more MCD)


def pyworld():
    """The pyworld module, or a clear error naming the extra that installs it."""
    try:
        with warnings.catch_warnings():  # pyworld 0.3.5 imports the deprecated pkg_resources
            warnings.simplefilter("ignore", UserWarning)
            import pyworld
    except ImportError:
        raise StyletxError("the world encoder and --vocoder world need the pyworld package: "
                           "pip install 'styletx[world]'") from None
    return pyworld


def has_pyworld() -> bool:
    try:
        pyworld()
    except StyletxError:
        return False
    return True


def robust_log_f0(f0: np.ndarray) -> tuple[float, float]:
    """The median and the spread (1.4826 times the median absolute deviation: the standard
    deviation for a normal distribution) of the log F0 of the voiced frames (``f0 > 0``; at
    least one). Harvest doubles or halves the pitch of a few frames at voicing edges, which
    pulled a synthetic 110 Hz voice's mean to 135 Hz; the median stays at 111."""
    log_f0 = np.log(f0[f0 > 0])
    centre = float(np.median(log_f0))
    return centre, 1.4826 * float(np.median(np.abs(log_f0 - centre)))


def moved_f0(f0: np.ndarray, own: tuple[float, float], to: tuple[float, float]) -> np.ndarray:
    """F0 moved from its ``own`` log-F0 centre and spread ``to`` others (unvoiced stays 0);
    an utterance with too few voiced frames for a spread keeps its own."""
    voiced = f0 > 0
    centre, spread = own
    ratio = to[1] / spread if voiced.sum() >= MIN_VOICED and spread > 1e-6 else 1.0
    out = np.zeros_like(f0)
    out[voiced] = np.exp((np.log(f0[voiced]) - centre) * ratio + to[0])
    return out


def quick_f0(wave: np.ndarray, rate: int) -> np.ndarray:
    """F0 per 10 ms by DIO and StoneMask: ~15 times faster than Harvest, good enough for a
    voice's pitch statistics (its spread comes out ~20 % narrower, so compare only spreads
    measured alike)."""
    pw = pyworld()
    x = np.ascontiguousarray(wave, np.float64)
    f0, times = pw.dio(x, rate, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=10.0)
    return pw.stonemask(x, f0, times, rate)


def pitch_statistics(waves: Sequence[np.ndarray], rate: int) -> np.ndarray | None:
    """``[centre, spread]`` of a voice's log F0 over its recordings (``quick_f0``), or None
    when fewer than ``MIN_VOICED`` frames are voiced. Reads the first ``PITCH_SECONDS``."""
    budget, tracks = PITCH_SECONDS * rate, []
    for wave in waves:  # ten minutes tell a voice's range; an hour would only cost time
        if budget <= 0:
            break
        tracks.append(quick_f0(wave, rate))
        budget -= len(wave)
    f0 = np.concatenate(tracks) if tracks else np.zeros(0)
    if (f0 > 0).sum() < MIN_VOICED:
        return None
    centre, spread = robust_log_f0(f0)
    return np.array([centre, max(spread, 1e-3)])


def stretched(values: np.ndarray, frames: int) -> np.ndarray:
    """Per-frame ``values`` (frames first) at ``frames`` frames, by the nearest frame: a
    model's output can differ from its source by the padding of a frame or two."""
    if len(values) == frames:
        return values
    index = np.minimum((np.arange(frames) * len(values) / max(frames, 1)).astype(int),
                       len(values) - 1)
    return values[index]


def world_resynthesis(decoded: np.ndarray, source: np.ndarray, rate: int,
                      pitch: np.ndarray | None) -> np.ndarray:
    """``decoded`` (a converted voice, e.g. from Griffin-Lim) re-synthesised by WORLD.

    The envelope is CheapTrick's of ``decoded``, the pitch contour and aperiodicity Harvest's
    and D4C's of ``source`` (the recording it was converted from, at ``rate`` too), the
    contour moved to ``pitch`` (``pitch_statistics`` of the output voice). Without it (a run
    trained without pyworld installed) the contour moves to the decoded wave's own pitch
    centre and spread. The result has ``decoded``'s length and RMS level; a source with
    too few voiced frames to move (a whisper, noise, under 50 ms) gives ``decoded`` back
    unchanged. It analyses the whole file at once: about 2 MB of memory per second.
    """
    pw = pyworld()
    x = np.ascontiguousarray(source, np.float64)
    y = np.ascontiguousarray(decoded, np.float64)
    if min(len(x), len(y)) < rate * FRAME_PERIOD / 1000 * MIN_VOICED:
        return decoded
    f0, times = pw.harvest(x, rate, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL,
                           frame_period=FRAME_PERIOD)
    own_f0 = quick_f0(x, rate)
    if (f0 > 0).sum() < MIN_VOICED or (own_f0 > 0).sum() < MIN_VOICED:
        return decoded
    to = pitch if pitch is not None else pitch_statistics([y], rate)
    if to is None:
        return decoded
    # The source's centre and spread by the same estimator as the target's (quick_f0).
    centre, spread = robust_log_f0(own_f0)
    moved = moved_f0(f0, (centre, max(spread, MIN_SPREAD)), tuple(to))
    moved[moved > 0] = np.clip(moved[moved > 0], F0_FLOOR, F0_CEIL)
    frames = int(len(y) / rate * 1000 / FRAME_PERIOD) + 1
    f0_out = stretched(moved, frames)
    aperiodicity = stretched(pw.d4c(x, f0, times, rate), frames)
    times_out = np.arange(frames) * FRAME_PERIOD / 1000
    envelope = pw.cheaptrick(y, f0_out, times_out, rate, f0_floor=F0_FLOOR)
    wave = pw.synthesize(f0_out, envelope, aperiodicity, rate, FRAME_PERIOD)[: len(y)]
    wave = np.pad(wave, (0, len(y) - len(wave)))
    level = np.sqrt(np.mean(y ** 2) / max(float(np.mean(wave ** 2)), 1e-20))
    return (wave * level).astype(np.float32)


def with_band_levels(wave: np.ndarray, magnitude: np.ndarray, filterbank: np.ndarray,
                     n_fft: int, hop: int) -> np.ndarray:
    """``wave`` with its STFT magnitude scaled, band by band of ``filterbank`` ``(bands,
    n_fft // 2 + 1)``, to the band levels of ``magnitude`` ``(n_fft // 2 + 1, frames)``, the
    spectrogram it was decoded from; its phase kept (one inverse STFT, no iterations). The
    STFT is ``styletx.audio.dsp``'s (centred frames), so ``wave`` has as many frames."""
    from styletx.audio.dsp import _stft, griffinlim

    spec = _stft(np.asarray(wave, np.float64)[None], n_fft, hop)[0].T
    if spec.shape[1] != magnitude.shape[1]:
        raise ValueError(f"{spec.shape[1]} frames in the wave, {magnitude.shape[1]} decoded")
    own = np.abs(spec)
    gain = (filterbank @ magnitude + 1e-8) / (filterbank @ own + 1e-8)
    spread = filterbank.T / np.maximum(filterbank.T.sum(axis=1, keepdims=True), 1e-12)
    return griffinlim(own * (spread @ gain), n_fft=n_fft, hop=hop, n_iter=0, init_phase=spec,
                      length=len(wave)).astype(np.float32)
