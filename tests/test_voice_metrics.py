"""Voice metrics (MCD, F0) measured on synthetic voices whose pitch and timbre are known."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf

from styletx.synthvoice import HIGH, LOW, Voice, utterance, write_voice_folders
from styletx.voice_metrics import (
    MCD_CONSTANT,
    f0_track,
    log_f0_stats,
    mcd,
    median_f0,
    mel_cepstrum,
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


def test_voice_and_utterance_reject_bad_settings():
    with pytest.raises(ValueError, match="equal length"):
        Voice(100.0, (500.0, 1500.0), (50.0,))
    with pytest.raises(ValueError, match="Nyquist"):
        utterance(HIGH, 1.0, rate=8000)
    with pytest.raises(ValueError, match="at least"):
        utterance(LOW, 0.1)


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
