"""WORLD re-synthesis of a decoded voice (styletx.audio.vocoder, ``convert --vocoder world``):
the envelope from the decoded wave, the pitch contour and aperiodicity from the source."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from styletx.audio.dsp import mel_filterbank, stft_magnitude
from styletx.audio.metrics import mcd, median_f0
from styletx.audio.synth import HIGH, LOW, utterance
from styletx.audio.vocoder import pitch_statistics, with_band_levels, world_resynthesis
from styletx.contract.errors import StyletxError
from styletx.plugins.audio import AudioSample, MelEncoder

RATE = 22050
needs_pyworld = pytest.mark.skipif(  # .ci/run installs it (styletx[world]: a compiler)
    importlib.util.find_spec("pyworld") is None, reason="pyworld is not installed")


@pytest.fixture(scope="module")
def low():
    return utterance(LOW, 1.5, seed=0)


@pytest.fixture(scope="module")
def high():
    return utterance(HIGH, 1.5, seed=1)


@needs_pyworld
def test_the_voice_takes_the_decoded_timbre_and_the_fitted_pitch(low, high):
    """A low voice's contour moved to a high voice's statistics, with the high voice's
    envelope: the pitch is the high voice's and the timbre nearer it than the source's."""
    pitch = pitch_statistics([high], RATE)
    assert np.exp(pitch[0]) == pytest.approx(HIGH.f0_hz, rel=0.1)
    out = world_resynthesis(high, low, RATE, pitch)
    assert out.dtype == np.float32 and len(out) == len(high)
    assert np.sqrt(np.mean(out ** 2)) == pytest.approx(np.sqrt(np.mean(high ** 2)), rel=1e-3)
    assert median_f0(out, RATE) == pytest.approx(HIGH.f0_hz, rel=0.1)
    assert mcd(out, high, RATE) < mcd(low, high, RATE) - 1.0


@needs_pyworld
def test_without_fitted_statistics_the_pitch_centre_is_the_decoded_waves(low, high):
    out = world_resynthesis(high, low, RATE, None)
    assert median_f0(out, RATE) == pytest.approx(HIGH.f0_hz, rel=0.1)


@needs_pyworld
def test_an_unvoiced_source_leaves_the_decoded_wave_as_it_is(high):
    noise = np.random.default_rng(0).normal(0, 0.1, len(high)).astype(np.float32)
    assert world_resynthesis(high, noise, RATE, np.array([np.log(200.0), 0.1])) is high


@needs_pyworld
def test_a_monotone_source_keeps_its_pitch_in_range(high):
    """A test tone's tiny spread is not stretched to a voice's: its wobbles would become
    pitches far outside the search range (CheapTrick then failed with a MemoryError)."""
    t = np.arange(len(high)) / RATE  # 150 Hz (+-0.2 %) for 1.2 s, then 300 Hz
    f0 = np.where(t < 1.2, 150.0 * (1 + 0.002 * np.sin(2 * np.pi * 5 * t)), 300.0)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    tone = (0.1 * sum(np.sin(k * phase) / k for k in range(1, 11))).astype(np.float32)
    out = world_resynthesis(high, tone, RATE, np.array([np.log(200.0), 0.15]))
    assert out is not high and len(out) == len(high) and np.isfinite(out).all()
    assert median_f0(out, RATE) == pytest.approx(200, rel=0.1)


@needs_pyworld
def test_the_spectrogram_encoders_fit_and_keep_the_pitch(low):
    encoder = MelEncoder(decoder_epochs=0)
    encoder.fit([AudioSample(low, RATE)])
    assert np.exp(encoder.pitch[0]) == pytest.approx(LOW.f0_hz, rel=0.1)
    again = MelEncoder(decoder_epochs=0)
    again.load_state_dict(encoder.state_dict())
    assert np.array_equal(again.pitch, encoder.pitch)


def test_band_levels_follow_the_decoded_spectrogram_and_keep_the_fine_structure(low, high):
    bands = mel_filterbank(RATE, 1024, 40).astype(np.float64)
    same = with_band_levels(low, stft_magnitude(low, 1024, 256), bands, 1024, 256)
    snr_db = 10 * np.log10(np.sum(low ** 2) / np.sum((same - low) ** 2))
    assert snr_db > 40  # its own levels: the wave comes back
    louder = with_band_levels(low, 2 * stft_magnitude(low, 1024, 256), bands, 1024, 256)
    assert np.sqrt(np.mean(louder ** 2) / np.mean(low ** 2)) == pytest.approx(2, rel=0.02)
    # the high voice's band levels on the low voice's harmonics: its timbre, the low pitch
    moved = with_band_levels(low, stft_magnitude(high, 1024, 256)[:, :len(low) // 256 + 1],
                             bands, 1024, 256)
    assert mcd(moved, high, RATE) < mcd(low, high, RATE) - 1.0
    assert median_f0(moved, RATE) == pytest.approx(median_f0(low, RATE), rel=0.05)
    with pytest.raises(ValueError, match="frames"):
        with_band_levels(low[:-1024], stft_magnitude(low, 1024, 256), bands, 1024, 256)


def test_without_pyworld_training_fits_no_pitch_and_the_vocoder_says_what_to_install(
        low, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyworld", None)
    encoder = MelEncoder(decoder_epochs=0)
    encoder.fit([AudioSample(low, RATE)])
    assert encoder.pitch is None and "pitch" not in encoder.state_dict()
    again = MelEncoder(decoder_epochs=0)  # such a run (or an older one) loads without it
    again.load_state_dict(encoder.state_dict())
    assert again.pitch is None
    encoder.vocoder = "world"
    with pytest.raises(StyletxError, match=r"pip install 'styletx\[world\]'"):
        encoder.decode(encoder.encode(AudioSample(low, RATE)), like=AudioSample(low, RATE))
