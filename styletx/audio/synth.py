"""Synthetic voices with known pitch and timbre, for tests and demos.

A source-filter model, offline and deterministic: a glottal-pulse train (Rosenberg-style flow
pulses, differentiated for lip radiation) with a natural F0 contour, plus breath noise and a few
fricative bursts, shaped by a cascade of formant resonators whose frequencies follow the
"vowels" of the text. Two parts of an utterance are kept apart on purpose:

- the *text* (``text_seed``): syllable timing, pauses, the vowel of each syllable, fricatives and
  the intonation pattern, all relative to the voice, so two voices saying the same text line
  up frame for frame and differ only in pitch and timbre; ``tempo`` stretches its timing (the
  same syllables, slower or faster), for parallel utterances that line up only after DTW;
- the *performance* (``seed``): F0 drift, vibrato phase, jitter and breath noise.

The known answers a test can score against: the F0 contour is centred on ``Voice.f0_hz`` in
log frequency, and the spectral envelope is the voice's formants scaled by the vowel factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import butter, lfilter, sosfilt


@dataclass(frozen=True)
class Voice:
    """A speaker: mean pitch, neutral-vowel formants and their bandwidths (all in Hz)."""

    f0_hz: float
    formants: tuple[float, ...]
    bandwidths: tuple[float, ...]
    breathiness: float = 0.02  # RMS of the breath noise relative to the glottal source's

    def __post_init__(self):
        if self.f0_hz <= 0:
            raise ValueError(f"f0_hz must be positive, got {self.f0_hz}")
        if len(self.formants) != len(self.bandwidths) or not self.formants:
            raise ValueError("formants and bandwidths must be non-empty and of equal length")
        if min(self.formants) <= 0 or min(self.bandwidths) <= 0:
            raise ValueError("formants and bandwidths must be positive")


# A low, dark voice and a high, bright one: an octave apart in pitch, formants 20-45 % apart.
LOW = Voice(110.0, (600.0, 1040.0, 2250.0, 2450.0), (60.0, 70.0, 110.0, 120.0), breathiness=0.02)
HIGH = Voice(220.0, (800.0, 1350.0, 2900.0, 3600.0), (80.0, 90.0, 120.0, 150.0), breathiness=0.05)

# Vowels as factors on the voice's neutral F1 and F2 (higher formants move little): roughly
# /a/, /e/, /i/, /o/, /u/ and a neutral schwa.
VOWELS = np.array([
    [1.25, 1.05], [0.85, 1.35], [0.50, 1.75], [0.90, 0.75], [0.55, 0.60], [1.00, 1.00],
])

_BLOCK_S = 0.005  # the formant filters are updated every 5 ms


def utterance(voice: Voice, seconds: float, rate: int = 22050, seed: int = 0,
              text_seed: int | None = None, tempo: float = 1.0) -> np.ndarray:
    """Synthesise ``seconds`` of speech-like audio by ``voice``.

    Args:
        voice: the speaker.
        seconds: duration of the text at tempo 1; the result has exactly
            ``round(seconds / tempo * rate)`` samples.
        rate: sample rate in Hz.
        seed: the performance noise (F0 drift, vibrato phase, jitter, breath noise).
        text_seed: the "words" (syllable timing, pauses, vowels, intonation); defaults to
            ``seed``. Equal ``text_seed`` and ``seconds`` give the same timing and content in
            any voice.
        tempo: speaking rate: every syllable, consonant and pause (and the formant and accent
            transitions) lasts ``1 / tempo`` times as long, so the same ``text_seed`` and
            ``seconds`` at tempo 0.8 say the same syllables in the same order, 25 % slower
            (to within a sample per event), a parallel utterance of another length. Pitch and
            the performance's rates (vibrato, drift) do not change. 1 is the original timing.

    Returns:
        float32 array of shape ``(round(seconds / tempo * rate),)``, peak 0.5.

    Raises:
        ValueError: ``seconds`` below 0.25, ``tempo`` not positive, or a formant too close to
            the Nyquist frequency.
    """
    if seconds < 0.25:
        raise ValueError(f"an utterance needs at least 0.25 s, got {seconds} s")
    if not tempo > 0:
        raise ValueError(f"tempo must be positive, got {tempo}")
    n = int(round(seconds / tempo * rate))
    if max(voice.formants) >= 0.45 * rate:
        raise ValueError(f"formant {max(voice.formants)} Hz is too close to Nyquist at {rate} Hz")
    text = _text(np.random.default_rng([1, seed if text_seed is None else text_seed]),
                 int(round(seconds * rate)), rate, tempo, n)
    rng = np.random.default_rng([2, seed])
    t = np.arange(n) / rate

    # F0: the voice's pitch times intonation (text), slow drift, vibrato and jitter
    # (performance); all terms are centred on zero in log frequency.
    drift = _smooth_noise(rng, n, rate, cutoff_hz=1.5) * 0.03
    vibrato = 0.008 * np.sin(2 * np.pi * rng.uniform(4.5, 6.0) * t + rng.uniform(0, 2 * np.pi))
    jitter = _smooth_noise(rng, n, rate, cutoff_hz=60.0) * 0.004
    log_ratio = text["intonation"] + drift + vibrato + jitter
    voiced = text["voicing"] > 0.5
    if voiced.any():  # centre the contour on the voice's F0 where it is heard
        log_ratio -= np.median(log_ratio[voiced])
    f0 = voice.f0_hz * np.exp(log_ratio)
    phase = np.cumsum(f0 / rate)
    source = _glottal_flow_derivative(phase % 1.0)
    source /= np.sqrt(np.mean(source**2)) + 1e-12

    # Breath noise comes in bursts during the open phase of each cycle, as in real voices.
    pulsing = np.where(phase % 1.0 < 0.6, 1.0, 0.3)
    breath = rng.standard_normal(n) * pulsing * (voice.breathiness / np.sqrt(np.mean(pulsing**2)))
    out = _formant_filter((source + breath) * text["voicing"], voice, text["vowel_factors"], rate)
    # A first-order lift (~ +6 dB/octave from ~800 Hz up) with the higher poles in the cascade
    # keeps the harmonics up to ~8 kHz, as in speech.
    out = lfilter([1.0, -0.8], [1.0], out)
    # Fricatives bypass the vowel tract: high-passed noise, its band tied to the voice's top
    # formant, at a fixed level below the vowels.
    level = 0.3 * np.sqrt(np.mean(out[voiced] ** 2)) if voiced.any() else 0.0
    cutoff = min(1.4 * voice.formants[-1], 0.4 * rate)
    out += level * _highpass_noise(rng, n, rate, cutoff) * text["frication"]
    out += rng.standard_normal(n) * 1e-5  # a faint noise floor, so pauses are not digital zero
    out -= out.mean()
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def write_voice_folders(root: str | Path, n_train: int = 8, n_test: int = 2,
                        seconds: float = 2.0, rate: int = 22050) -> dict[str, Path]:
    """Write FLAC folders for voice-conversion tests; returns ``{name: folder}``.

    ``a/`` holds the LOW voice saying texts ``0 .. n_train-1``; ``b/`` the HIGH voice saying
    *other* texts (unpaired). ``test_a/`` and ``test_b/`` hold held-out texts said by both
    voices, under the same file names (``held000.flac`` ...), so a conversion of ``test_a/x``
    can be scored against ``test_b/x``. Every file has its own performance seed; each file is
    ``seconds`` long, 16-bit FLAC at ``rate`` Hz.
    """
    folders = _voice_folders(root)
    for i in range(n_train):
        _write_utterance(folders["a"] / f"low{i:03d}.flac", LOW, seconds, rate, seed=i,
                         text_seed=i)
        _write_utterance(folders["b"] / f"high{i:03d}.flac", HIGH, seconds, rate, seed=100 + i,
                         text_seed=n_train + i)
    _write_held_out(folders, n_test, seconds, rate, tempo_b=1.0)
    return folders


def write_parallel_voice_folders(root: str | Path, n_train: int = 8, n_test: int = 2,
                                 seconds: float = 2.0, tempo_b: float = 0.8,
                                 rate: int = 22050) -> dict[str, Path]:
    """Write *paired* FLAC folders (for pix2pix) whose pairs differ in length; returns
    ``{name: folder}``.

    ``a/`` holds the LOW voice saying texts ``0 .. n_train-1`` (``utt000.flac`` ...) and ``b/``
    the HIGH voice saying the *same* texts at ``tempo_b`` under the same file names, so the
    files pair by name but a pair lines up only after time alignment (DTW): at the default
    tempo 0.8 every ``b/`` file says the same syllables 25 % slower. ``test_a/`` and
    ``test_b/`` hold held-out texts the same way (``held000.flac`` ...; the same files as
    ``write_voice_folders`` writes when ``tempo_b`` is 1). Every file has its own performance
    seed; ``a/`` files are ``seconds`` long and ``b/`` files ``seconds / tempo_b``, 16-bit FLAC
    at ``rate`` Hz.
    """
    folders = _voice_folders(root)
    for i in range(n_train):
        name = f"utt{i:03d}.flac"
        _write_utterance(folders["a"] / name, LOW, seconds, rate, seed=i, text_seed=i)
        _write_utterance(folders["b"] / name, HIGH, seconds, rate, seed=100 + i, text_seed=i,
                         tempo=tempo_b)
    _write_held_out(folders, n_test, seconds, rate, tempo_b)
    return folders


def _voice_folders(root: str | Path) -> dict[str, Path]:
    """``a/``, ``b/``, ``test_a/`` and ``test_b/`` under ``root``, created."""
    folders = {name: Path(root) / name for name in ("a", "b", "test_a", "test_b")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def _write_held_out(folders: dict[str, Path], n_test: int, seconds: float, rate: int,
                    tempo_b: float) -> None:
    """Held-out texts said by LOW in ``test_a/`` and by HIGH at ``tempo_b`` in ``test_b/``."""
    for i in range(n_test):
        name, text = f"held{i:03d}.flac", 10_000 + i
        _write_utterance(folders["test_a"] / name, LOW, seconds, rate, seed=200 + i,
                         text_seed=text)
        _write_utterance(folders["test_b"] / name, HIGH, seconds, rate, seed=300 + i,
                         text_seed=text, tempo=tempo_b)


def _write_utterance(path: Path, voice: Voice, seconds: float, rate: int, seed: int,
                     text_seed: int, tempo: float = 1.0) -> None:
    """One ``utterance`` as 16-bit FLAC."""
    import soundfile as sf

    wave = utterance(voice, seconds, rate, seed=seed, text_seed=text_seed, tempo=tempo)
    sf.write(path, wave, rate, format="FLAC", subtype="PCM_16")


def _text(rng: np.random.Generator, n: int, rate: int, tempo: float = 1.0,
          n_out: int | None = None) -> dict[str, np.ndarray]:
    """Per-sample tracks of one "sentence": voicing envelope, frication envelope, vowel
    factors ``(n, 2)`` for F1 and F2, and intonation in log frequency.

    The sentence is drawn on the tempo-1 time grid (``n`` samples at tempo 1, whatever the
    tempo), so the draws and hence the syllables are the same at every tempo; the events are
    then placed at ``1 / tempo`` times their tempo-1 sample positions in tracks of ``n_out``
    samples (default ``round(n / tempo)``), and the smoothing widths stretch alike.
    """
    frications, syllables = [], []  # (start, end) and (start, end, vowel, accent), tempo 1
    pos = int(rng.uniform(0.03, 0.08) * rate)  # a short lead-in of silence
    while pos < n:
        if rng.random() < 0.35:  # an unvoiced consonant before the vowel
            length = int(rng.uniform(0.04, 0.08) * rate)
            frications.append((pos, pos + length))
            pos += length
            if pos >= n:
                break
        length = int(rng.uniform(0.14, 0.28) * rate)
        vowel = VOWELS[rng.integers(len(VOWELS))]
        syllables.append((pos, pos + length, vowel, rng.normal(0, 0.03)))
        pos = min(pos + length, n)
        # Short gaps between syllables, longer ones between "words".
        pos += int((rng.uniform(0.10, 0.20) if rng.random() < 0.3 else rng.uniform(0.0, 0.04))
                   * rate)

    def at(sample: int | float) -> int:  # a tempo-1 position on the output's time grid
        return int(sample) if tempo == 1.0 else int(round(sample / tempo))

    n = at(n) if n_out is None else n_out
    voicing, frication = np.zeros(n), np.zeros(n)
    targets = np.ones((n, 2))
    intonation = np.zeros(n)
    for start, end in frications:
        start, end = at(start), at(end)
        frication[start:end] = _raised_cosine(end - start, 0.3)[: max(0, n - start)]
    for start, end, vowel, accent in syllables:
        start, length = at(start), at(end) - at(start)
        end = min(start + length, n)
        voicing[start:end] = _raised_cosine(length, 0.15)[: end - start]
        # Vowel targets hold through the following pause, so formants glide between syllables.
        targets[start:] = vowel
        intonation[start:end] = accent  # per-syllable accent, about +-0.5 semitone
    # Smooth vowel targets (~40 ms transitions) and accents into continuous tracks.
    vowel_factors = np.stack([_moving_average(targets[:, i], at(0.04 * rate)) for i in range(2)],
                             axis=1)
    intonation = _moving_average(intonation, at(0.06 * rate))
    return {"voicing": voicing, "frication": frication, "vowel_factors": vowel_factors,
            "intonation": intonation}


def _glottal_flow_derivative(p: np.ndarray, opening: float = 0.4, closing: float = 0.16):
    """Rosenberg glottal flow over one period (``p`` in [0, 1)), differentiated for the lip
    radiation: a smooth rise and a sharp closing instant, with a spectrum falling ~6 dB/oct."""
    flow = np.where(p < opening, 0.5 * (1 - np.cos(np.pi * p / opening)),
                    np.where(p < opening + closing,
                             np.cos(0.5 * np.pi * (p - opening) / closing), 0.0))
    return np.diff(flow, prepend=flow[0])


def _formant_filter(x: np.ndarray, voice: Voice, vowel_factors: np.ndarray, rate: int):
    """Cascade of 2nd-order resonators (unity gain at DC).

    F1 and F2 follow the vowel and F3 moves a little with F2: their coefficients are updated
    every 5 ms with the filter states carried over, so the formants glide without clicks.
    Higher formants stay put. Above them, fixed wide "higher poles" (spaced 0.4 x the top
    formant, up to 0.4 x rate) stand in for the formants a 4-pole cascade lacks; without them the
    spectrum would fall ~50 dB/octave above the top formant, far steeper than speech.
    """
    top = voice.formants[-1]
    n_moving = min(3, len(voice.formants))
    fixed = [(f, b) for f, b in zip(voice.formants[n_moving:], voice.bandwidths[n_moving:])]
    k = 1
    while top * (1 + 0.4 * k) < 0.4 * rate:
        fixed.append((top * (1 + 0.4 * k), 200.0 + 50.0 * k))
        k += 1
    y = x
    for freq, bandwidth in fixed:
        y = lfilter(*_resonator(freq, bandwidth, rate), y)

    block = max(1, int(_BLOCK_S * rate))
    out = np.empty(len(x))
    states = [np.zeros(2) for _ in range(n_moving)]
    for start in range(0, len(x), block):
        chunk = y[start:start + block]
        f1, f2 = vowel_factors[start]
        scales = (f1, f2, 1 + 0.15 * (f2 - 1))
        for k in range(n_moving):
            freq = min(voice.formants[k] * scales[k], 0.45 * rate)
            b, a = _resonator(freq, voice.bandwidths[k], rate)
            chunk, states[k] = lfilter(b, a, chunk, zi=states[k])
        out[start:start + block] = chunk
    return out


def _resonator(freq: float, bandwidth: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(b, a)`` of a 2-pole resonator at ``freq`` Hz with ``bandwidth`` Hz, unity gain at DC."""
    r = np.exp(-np.pi * bandwidth / rate)
    a = np.array([1.0, -2 * r * np.cos(2 * np.pi * freq / rate), r * r])
    return np.array([a.sum()]), a


def _smooth_noise(rng: np.random.Generator, n: int, rate: int, cutoff_hz: float) -> np.ndarray:
    """Unit-RMS noise low-passed at about ``cutoff_hz``."""
    noise = _moving_average(rng.standard_normal(n), max(1, int(rate / cutoff_hz)))
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _highpass_noise(rng: np.random.Generator, n: int, rate: int, cutoff_hz: float):
    """Unit-RMS white noise high-passed at ``cutoff_hz`` (4th-order Butterworth)."""
    noise = sosfilt(butter(4, cutoff_hz, "highpass", fs=rate, output="sos"), rng.standard_normal(n))
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return x.copy()
    # A running sum: O(n) for any width (np.convolve would be O(n * width)).
    padded = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
    sums = np.cumsum(np.concatenate([[0.0], padded]))
    return (sums[width:] - sums[:-width]) / width


def _raised_cosine(length: int, ramp: float) -> np.ndarray:
    """A flat envelope with cosine ramps over ``ramp`` of its length at each end."""
    env = np.ones(length)
    r = max(1, min(int(ramp * length), length // 2))
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
    env[:r] = edge
    env[length - r:] = edge[::-1]
    return env
