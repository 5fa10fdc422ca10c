"""Voice metrics (MCD, F0) measured on synthetic voices whose pitch and timbre are known."""

from __future__ import annotations

import dataclasses

import librosa
import numpy as np
import pytest
import soundfile as sf

from styletx.audio.metrics import (
    MCD_CONSTANT,
    f0_difference_cents,
    f0_track,
    log_f0_rmse,
    log_f0_stats,
    mcd,
    median_f0,
    mel_cepstrum,
)
from styletx.audio.synth import (
    HIGH,
    LOW,
    Voice,
    _text,
    utterance,
    write_parallel_voice_folders,
    write_voice_folders,
)

RATE = 22050
SECONDS = 1.5
TEXT = 7


@pytest.fixture(scope="module")
def low():
    return utterance(LOW, SECONDS, RATE, seed=1, text_seed=TEXT)


@pytest.fixture(scope="module")
def high():
    """The same words as ``low``, by the other voice with another performance."""
    return utterance(HIGH, SECONDS, RATE, seed=2, text_seed=TEXT)


@pytest.fixture(scope="module")
def low_again():
    """The same words by the same voice, only the performance noise differs."""
    return utterance(LOW, SECONDS, RATE, seed=3, text_seed=TEXT)


@pytest.fixture(scope="module")
def high_slow():
    """The same words as ``low`` by the other voice, 25 % slower (a longer wave)."""
    return utterance(HIGH, SECONDS, RATE, seed=2, text_seed=TEXT, tempo=0.8)


def frame_by_frame_mcd(x: np.ndarray, y: np.ndarray) -> float:
    """MCD without alignment, over the common length: what DTW is there to avoid."""
    cx, cy = mel_cepstrum(x, RATE)[1:], mel_cepstrum(y, RATE)[1:]
    n = min(cx.shape[1], cy.shape[1])
    return float(MCD_CONSTANT * np.linalg.norm(cx[:, :n] - cy[:, :n], axis=0).mean())


# --- synthetic voices -------------------------------------------------------------------------

def test_utterance_is_deterministic_float32_with_peak_half(low):
    again = utterance(LOW, SECONDS, RATE, seed=1, text_seed=TEXT)
    assert low.dtype == np.float32 and low.shape == (round(SECONDS * RATE),)
    np.testing.assert_array_equal(low, again)
    assert np.max(np.abs(low)) == pytest.approx(0.5, rel=1e-3)


def test_same_text_same_timing_in_both_voices(low, high):
    assert low.shape == high.shape
    # Same syllables at the same times: the loudness contours line up...
    rms_low = librosa.feature.rms(y=low, hop_length=256)[0]
    rms_high = librosa.feature.rms(y=high, hop_length=256)[0]
    assert np.corrcoef(rms_low > 0.05 * rms_low.max(), rms_high > 0.05 * rms_high.max())[0, 1] > 0.9
    # ...and another text does not.
    other = utterance(LOW, SECONDS, RATE, seed=1, text_seed=TEXT + 1)
    rms_other = librosa.feature.rms(y=other, hop_length=256)[0]
    assert np.corrcoef(rms_low > 0.05 * rms_low.max(),
                       rms_other > 0.05 * rms_other.max())[0, 1] < 0.7


def test_tempo_stretches_the_same_text(low, high_slow):
    assert high_slow.dtype == np.float32 and high_slow.shape == (round(SECONDS / 0.8 * RATE),)
    assert np.max(np.abs(high_slow)) == pytest.approx(0.5, rel=1e-3)
    np.testing.assert_array_equal(utterance(LOW, SECONDS, RATE, seed=1, text_seed=TEXT,
                                            tempo=1.0), low)

    def loudness_at(wave: np.ndarray, frames: np.ndarray) -> np.ndarray:
        rms = librosa.feature.rms(y=wave, hop_length=256)[0]
        return np.interp(frames, np.arange(len(rms)), rms)

    # The slow wave's loudness contour, read at 1 / 0.8 x the times, is that of ``low``...
    frames = np.arange(1 + len(low) // 256)
    contour = loudness_at(low, frames)
    slow = utterance(LOW, SECONDS, RATE, seed=3, text_seed=TEXT, tempo=0.8)
    assert np.corrcoef(contour, loudness_at(slow, frames / 0.8))[0, 1] > 0.95  # measured 0.99
    # ...which neither the unstretched times nor another text's slow wave match.
    assert np.corrcoef(contour, loudness_at(slow, frames))[0, 1] < 0.6
    other = utterance(LOW, SECONDS, RATE, seed=3, text_seed=TEXT + 1, tempo=0.8)
    assert np.corrcoef(contour, loudness_at(other, frames / 0.8))[0, 1] < 0.6


def test_tempo_keeps_the_draws_of_the_text():
    """Every tempo says the same syllables (and consonants) in the same order."""
    def onsets(track):
        rising = np.diff(np.concatenate([[0], (track > 0.5).astype(int)])) == 1
        return np.flatnonzero(rising)

    n = round(SECONDS * RATE)
    for text_seed in range(20):
        plain = _text(np.random.default_rng([1, text_seed]), n, RATE)
        for tempo in (0.8, 1.25):
            stretched = _text(np.random.default_rng([1, text_seed]), n, RATE, tempo,
                              round(SECONDS / tempo * RATE))
            for track in ("voicing", "frication"):
                a, b = onsets(plain[track]), onsets(stretched[track])
                assert len(a) == len(b)
                np.testing.assert_allclose(b, a / tempo, atol=2)
            # The vowel targets and accents follow, stretched.
            times = np.arange(len(stretched["intonation"])) * tempo
            for track in ("intonation", "vowel_factors"):
                np.testing.assert_allclose(
                    stretched[track],
                    np.stack([np.interp(times, np.arange(n), column)
                              for column in np.atleast_2d(plain[track].T)], axis=-1)
                    .reshape(stretched[track].shape), atol=0.02)


def test_voice_and_utterance_reject_bad_settings():
    with pytest.raises(ValueError, match="equal length"):
        Voice(100.0, (500.0, 1500.0), (50.0,))
    with pytest.raises(ValueError, match="Nyquist"):
        utterance(HIGH, 1.0, rate=8000)
    with pytest.raises(ValueError, match="at least"):
        utterance(LOW, 0.1)
    with pytest.raises(ValueError, match="tempo"):
        utterance(LOW, 1.0, tempo=0.0)


def test_write_voice_folders(tmp_path):
    folders = write_voice_folders(tmp_path, n_train=2, n_test=2, seconds=0.5)
    assert set(folders) == {"a", "b", "test_a", "test_b"}
    names = {key: sorted(p.name for p in folder.glob("*.flac")) for key, folder in folders.items()}
    assert len(names["a"]) == len(names["b"]) == 2
    assert names["test_a"] == names["test_b"] and len(names["test_a"]) == 2
    wave, rate = sf.read(folders["test_a"] / names["test_a"][0], dtype="float32")
    assert rate == RATE and wave.shape == (round(0.5 * RATE),)
    # Held-out pairs say the same words; the training folders say different ones (unpaired).
    pair = [sf.read(folders[k] / names["test_a"][0])[0] for k in ("test_a", "test_b")]
    train = [sf.read(folders[k] / names[k][0])[0] for k in ("a", "b")]

    def speech(w):
        rms = librosa.feature.rms(y=w, hop_length=256)[0]
        return rms > 0.05 * rms.max()

    assert np.corrcoef(speech(pair[0]), speech(pair[1]))[0, 1] > 0.9
    assert not np.array_equal(speech(train[0]), speech(train[1]))


def test_write_parallel_voice_folders(tmp_path):
    folders = write_parallel_voice_folders(tmp_path, n_train=2, n_test=1, seconds=SECONDS,
                                           tempo_b=0.8)
    assert set(folders) == {"a", "b", "test_a", "test_b"}
    names = {key: sorted(p.name for p in folder.glob("*.flac")) for key, folder in folders.items()}
    assert names["a"] == names["b"] == ["utt000.flac", "utt001.flac"]
    assert names["test_a"] == names["test_b"] == ["held000.flac"]
    for side, samples in (("a", round(SECONDS * RATE)), ("b", round(SECONDS / 0.8 * RATE))):
        info = sf.info(folders[side] / "utt000.flac")
        assert (info.samplerate, info.frames, info.subtype) == (RATE, samples, "PCM_16")
    assert sf.info(folders["test_b"] / "held000.flac").frames == round(SECONDS / 0.8 * RATE)
    # A file and its pair say the same words: DTW finds them, so their MCD (the speakers'
    # difference alone, ~6 dB) is well below that against the other text's pair (~8 dB).
    a = [sf.read(folders["a"] / name)[0] for name in names["a"]]
    b = [sf.read(folders["b"] / name)[0] for name in names["b"]]
    distances = np.array([[mcd(x, y, RATE) for y in b] for x in a])
    assert np.all(np.diag(distances) < 7.0)
    assert distances[0, 1] > distances[0, 0] + 1.0 and distances[1, 0] > distances[1, 1] + 1.0


# --- mel-cepstral distortion ------------------------------------------------------------------

def test_mel_cepstrum_shape(low):
    c = mel_cepstrum(low, RATE, order=24)
    assert c.shape == (25, 1 + len(low) // 256) and np.all(np.isfinite(c))


def test_mcd_of_an_utterance_with_itself_is_zero(low):
    assert mcd(low, low, RATE) == pytest.approx(0.0, abs=1e-9)


def test_mcd_is_insensitive_to_time_shift_and_stretch(low, high):
    shifted = np.concatenate([np.zeros(int(0.1 * RATE), np.float32), low])
    stretched = librosa.effects.time_stretch(low, rate=0.9)  # 10 % slower, same pitch
    speakers = mcd(low, high, RATE)
    assert mcd(shifted, low, RATE) < 1.5 < frame_by_frame_mcd(shifted, low)
    assert mcd(stretched, low, RATE) < 0.6 * min(speakers, frame_by_frame_mcd(stretched, low))


def test_mcd_separates_speakers(low, high, low_again):
    same_speaker = mcd(low, low_again, RATE)
    other_speaker = mcd(low, high, RATE)
    assert same_speaker < 1.5
    assert other_speaker > 4.0 and other_speaker > 4 * same_speaker
    assert mcd(high, low, RATE) == pytest.approx(other_speaker)  # symmetric


# --- F0 ---------------------------------------------------------------------------------------

def test_median_f0_of_synthetic_voices(low, high):
    assert median_f0(low, RATE) == pytest.approx(LOW.f0_hz, rel=0.05)
    assert median_f0(high, RATE) == pytest.approx(HIGH.f0_hz, rel=0.05)


def test_log_f0_stats(low, high):
    mean, std = log_f0_stats(low, RATE)
    assert mean == pytest.approx(np.log(LOW.f0_hz), abs=0.05)
    assert 0 < std < 0.1  # drift, vibrato and intonation, a few percent
    # A list pools the voiced frames: two voices an octave apart average in between, spread wide.
    mean, std = log_f0_stats([low, high], RATE)
    assert np.log(LOW.f0_hz) + 0.2 < mean < np.log(HIGH.f0_hz) - 0.2
    assert std > 0.25


def test_log_f0_rmse_of_an_utterance_with_itself_is_zero(low):
    assert log_f0_rmse(low, low, RATE) == pytest.approx(0.0, abs=1e-9)


def test_log_f0_rmse_of_voices_an_octave_apart(low, high):
    # Same words, pitch contours centred an octave apart; measured 1200.9 cents (1188 to 1205
    # over text seeds 7-14), the rest is the performances' drift and pYIN's 10-cent grid.
    assert log_f0_rmse(high, low, RATE) == pytest.approx(1200, abs=30)
    cents = f0_difference_cents(high, low, RATE)
    assert cents.ndim == 1 and cents.size > 20
    assert cents.mean() == pytest.approx(1200, abs=30)  # the bias: all of it is offset
    assert np.mean(f0_difference_cents(low, high, RATE)) == pytest.approx(-cents.mean(), abs=1)


def test_log_f0_rmse_of_two_semitones(low):
    # The same performance by a voice whose only difference is F0 x 2^(2/12); measured 199.8
    # cents (199.3 to 201.4 over text seeds 7-14).
    up = dataclasses.replace(LOW, f0_hz=LOW.f0_hz * 2 ** (2 / 12))
    raised = utterance(up, SECONDS, RATE, seed=1, text_seed=TEXT)
    assert log_f0_rmse(raised, low, RATE) == pytest.approx(200, abs=5)


def test_log_f0_rmse_of_utterances_of_different_lengths(low, high_slow):
    # DTW pairs the slow wave's frames with the same syllables; measured 1198.9 cents (1199 to
    # 1236 over text seeds 7-14: a longer wave draws another pitch drift).
    assert len(high_slow) > 1.2 * len(low)
    assert log_f0_rmse(high_slow, low, RATE) == pytest.approx(1200, abs=50)
    assert log_f0_rmse(low, high_slow, RATE) == pytest.approx(1200, abs=50)


def test_log_f0_rmse_when_the_pyin_frame_is_odd():
    # At 16 kHz the default pYIN frame is 743 samples, which gives one frame fewer than the
    # cepstra when the hop divides the length: that last frame counts as unvoiced.
    rate, samples = 16000, 256 * 63
    low = utterance(LOW, samples / rate, rate, seed=1, text_seed=TEXT)
    high = utterance(HIGH, samples / rate, rate, seed=2, text_seed=TEXT)
    assert len(low) == samples
    assert log_f0_rmse(low, low, rate) == pytest.approx(0.0, abs=1e-9)
    assert log_f0_rmse(high, low, rate) == pytest.approx(1200, abs=50)


def test_log_f0_rmse_needs_voiced_frames_in_both(low):
    noise = np.random.default_rng(0).standard_normal(len(low)).astype(np.float32) * 0.1
    with pytest.raises(ValueError, match="voiced in both"):
        log_f0_rmse(noise, low, RATE)
    with pytest.raises(ValueError, match="silent"):
        log_f0_rmse(low, np.zeros(RATE, np.float32), RATE)


# --- bad input --------------------------------------------------------------------------------

BAD = {
    "silent": (np.zeros(RATE, np.float32), "silent"),
    "empty": (np.zeros(0, np.float32), "empty"),
    "too short": (np.full(100, 0.1, np.float32), "too short"),
    "stereo": (np.zeros((2, RATE), np.float32), "mono"),
    "nan": (np.full(RATE, np.nan, np.float32), "NaN"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_waves_raise_value_error(kind, low):
    wave, message = BAD[kind]
    with pytest.raises(ValueError, match=message):
        mcd(wave, low, RATE)
    with pytest.raises(ValueError, match=message):
        mcd(low, wave, RATE)
    with pytest.raises(ValueError, match=message):
        median_f0(wave, RATE)
    with pytest.raises(ValueError, match=message):
        log_f0_stats([low, wave], RATE)


def test_unvoiced_input_has_no_f0():
    noise = np.random.default_rng(0).standard_normal(RATE // 2).astype(np.float32) * 0.1
    with pytest.raises(ValueError, match="no voiced frames"):
        f0_track(noise, RATE)
    with pytest.raises(ValueError, match="no voiced frames"):
        log_f0_stats([noise], RATE)
    with pytest.raises(ValueError, match="no waves"):
        log_f0_stats([], RATE)
    with pytest.raises(ValueError, match="two periods"):
        f0_track(noise, 44100, frame_length=1024)
