"""The ``world`` voice encoder (styletx.plugins.world): WORLD's coded spectral envelope, decoded
with the source's F0 moved to the target voice's pitch."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from styletx.audio.metrics import mcd, median_f0
from styletx.audio.synth import HIGH, LOW, utterance
from styletx.contract.errors import StyletxError, UsageError
from styletx.plugins.audio import AudioDomain, AudioSample
from styletx.plugins.world import WorldEncoder

RATE = 22050
needs_pyworld = pytest.mark.skipif(  # .ci/run installs it (styletx[world]: a compiler)
    importlib.util.find_spec("pyworld") is None, reason="pyworld is not installed")


@pytest.fixture(scope="module")
def voices():
    return {"low": [AudioSample(utterance(LOW, 1.5, seed=s), RATE) for s in range(2)],
            "high": [AudioSample(utterance(HIGH, 1.5, seed=s + 2), RATE) for s in range(2)]}


@pytest.fixture(scope="module")
def fitted(voices):
    encoders = {name: WorldEncoder() for name in voices}
    for name, encoder in encoders.items():
        encoder.fit(voices[name])
    return encoders


@needs_pyworld
def test_round_trip_keeps_the_voice_and_the_length(voices, fitted):
    low, encoder = voices["low"][0], fitted["low"]
    x = encoder.encode(low)
    frames = 1 + int(low.seconds * 1000 / encoder.params["frame_period"])
    assert x.shape == (1, 36, frames) and x.dtype == torch.float32
    back = encoder.decode(x, like=low)
    assert back.rate == RATE and len(back.wave) == len(low.wave)
    assert mcd(back.wave, low.wave, RATE) < 3.0  # dB; against the other voice far more:
    assert mcd(voices["high"][0].wave, low.wave, RATE) > 6.0
    assert abs(np.log(median_f0(back.wave, RATE) / median_f0(low.wave, RATE))) < 0.05


@needs_pyworld
@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_the_encoded_width_is_known_before_fitting(rate):
    """Training refuses too-short recordings by it before Harvest's slow fit."""
    encoder = WorldEncoder()
    for length in (100, 2000, 4410, 9999):
        wave = np.random.default_rng(length).uniform(-0.5, 0.5, length).astype(np.float32)
        sample = AudioSample(wave, rate)
        assert encoder.width_before_fit(sample) == encoder.encode(sample).shape[-1]


@needs_pyworld
def test_fit_learns_each_sides_envelope_and_pitch(fitted):
    low, high = fitted["low"], fitted["high"]
    assert np.exp(low.log_f0[0]) == pytest.approx(LOW.f0_hz, rel=0.1)
    assert np.exp(high.log_f0[0]) == pytest.approx(HIGH.f0_hz, rel=0.1)
    assert not np.allclose(low.mean, high.mean)


@needs_pyworld
def test_decoding_moves_the_sources_pitch_to_the_targets(voices, fitted):
    """The low voice's envelope decoded by the high side: the pitch is the high voice's (the
    source's contour moved to the target's log-F0 median), the length the source's."""
    source = voices["low"][1]
    converted = fitted["high"].decode(fitted["low"].encode(source), like=source)
    assert len(converted.wave) == len(source.wave)
    assert median_f0(converted.wave, RATE) == pytest.approx(HIGH.f0_hz, rel=0.1)


@needs_pyworld
def test_converted_f0_maps_centre_and_spread_and_keeps_unvoiced_frames(fitted):
    encoder = fitted["high"]
    rng = np.random.default_rng(0)
    f0 = np.exp(rng.normal(np.log(100.0), 0.3, 200))
    f0[::5] = 0.0
    out = encoder.converted_f0(f0)
    assert (out[::5] == 0).all() and (out[f0 > 0] > 0).all()
    log_out = np.log(out[f0 > 0])
    centre = np.median(log_out)
    assert centre == pytest.approx(encoder.log_f0[0], abs=1e-9)
    spread = 1.4826 * np.median(np.abs(log_out - centre))
    assert spread == pytest.approx(encoder.log_f0[1], rel=1e-9)
    f0[:4] *= 2  # octave errors: the centre hardly moves
    assert np.median(np.log(encoder.converted_f0(f0)[f0 > 0])) == pytest.approx(
        encoder.log_f0[0], abs=0.02)
    assert (encoder.converted_f0(np.zeros(7)) == 0).all()  # nothing voiced: nothing moves


@needs_pyworld
def test_state_round_trip_and_decoding_without_a_source(voices, fitted):
    saved = fitted["high"]
    loaded = WorldEncoder(**saved.params)
    loaded.load_state_dict(saved.state_dict())
    x = loaded.encode(voices["high"][0])
    assert torch.equal(x, saved.encode(voices["high"][0]))
    monotone = loaded.decode(x)  # a training preview: a flat pitch at the side's mean
    assert monotone.rate == RATE and np.isfinite(monotone.wave).all()
    assert median_f0(monotone.wave, RATE) == pytest.approx(HIGH.f0_hz, rel=0.1)


@needs_pyworld
def test_a_quiet_recording_encodes_as_a_loud_one(voices, fitted):
    """Analysed at one speech level, as the spectrogram encoders encode: sentences 20 dB
    quieter than the training ones converted 0.5 dB MCD worse (their envelope's level,
    coefficient 0, lay outside what the model saw). A run saved before it (no level_db in
    its state) keeps analysing at the recording's own level."""
    encoder, loud = fitted["low"], voices["low"][0]
    quiet = AudioSample(loud.wave * 0.1, RATE)
    assert float((encoder.encode(quiet) - encoder.encode(loud)).abs().mean()) < 1e-3
    old_run = WorldEncoder(**encoder.params)
    old_run.load_state_dict({k: v for k, v in encoder.state_dict().items() if k != "level_db"})
    assert old_run.level_db is None
    gap = (old_run.encode(quiet) - old_run.encode(loud))[0, 0]  # the level, in spreads
    assert float(gap.mean()) < -0.5  # every frame shifted, by 0.77 spreads here


def test_smoothing_over_time_keeps_steady_changes_and_calms_flicker():
    from styletx.nn import smooth_time

    ramp = torch.linspace(0.0, 9.0, 40, dtype=torch.float64)
    assert torch.allclose(smooth_time(ramp, 5)[3:-3], ramp[3:-3])  # a steady change passes
    noise = torch.randn(2, 3, 400, generator=torch.Generator().manual_seed(0))
    out = smooth_time(noise, 5)
    assert out.shape == noise.shape
    assert out.diff(dim=-1).std() < 0.5 * noise.diff(dim=-1).std()
    assert smooth_time(noise, 1) is noise and smooth_time(noise, 4).shape == noise.shape
    assert torch.allclose(smooth_time(torch.ones(4, 9), 3), torch.ones(4, 9))


@needs_pyworld
def test_a_models_output_a_frame_longer_or_shorter_still_decodes(voices, fitted):
    source = voices["low"][0]
    x = fitted["low"].encode(source)
    for frames in (x.shape[-1] - 2, x.shape[-1] + 3):
        out = fitted["high"].decode(x[..., :frames] if frames < x.shape[-1]
                                    else torch.cat([x, x[..., -3:]], -1), like=source)
        assert len(out.wave) == len(source.wave)


@needs_pyworld
def test_analysis_is_computed_once_per_wave(voices, monkeypatch):
    encoder = WorldEncoder()
    sample = AudioSample(voices["low"][0].wave.copy(), RATE)
    calls = []
    analyse = encoder._analyse
    monkeypatch.setattr(encoder, "_analyse", lambda wave: calls.append(1) or analyse(wave))
    first = encoder.encode(sample)
    assert torch.equal(encoder.encode(sample), first) and len(calls) == 1
    encoder.encode(AudioSample(sample.wave.copy(), RATE))  # another wave: analysed anew
    assert len(calls) == 2


def test_bad_settings_and_a_missing_pyworld(monkeypatch):
    with pytest.raises(UsageError, match="unknown setting 'hop'"):
        WorldEncoder(hop=3)
    with pytest.raises(UsageError, match="f0_floor < f0_ceil"):
        WorldEncoder(f0_floor=500.0, f0_ceil=100.0)
    monkeypatch.setitem(sys.modules, "pyworld", None)
    with pytest.raises(StyletxError, match=r"pip install 'styletx\[world\]'"):
        WorldEncoder().encode(AudioSample(np.zeros(2205, np.float32), RATE))


@needs_pyworld
def test_a_voice_run_trains_and_converts_with_the_world_encoder(tmp_path):
    """The engine end to end: ``--encoder world`` fits both sides, trains, saves, and
    converting a file gives a wave of the source's length at the target's pitch."""
    import styletx
    from styletx.audio.synth import write_voice_folders

    folders = write_voice_folders(tmp_path / "data", n_train=3, n_test=1, seconds=1.0)
    run = tmp_path / "run"
    styletx.train(folders["a"], folders["b"], run, preset="tiny", encoder="world",
                  settings=styletx.TrainSettings(steps=4, progress=False, device="cpu"))
    model = styletx.load_run(run, device="cpu")
    assert {e.name for e in model.encoders.values()} == {"world"}
    source = sorted(folders["test_a"].glob("*.flac"))[0]
    report = model.convert_files([source], tmp_path / "out")
    assert not report.failed and len(report.converted) == 1
    domain = AudioDomain()
    out, original = domain.load(report.converted[0][1]), domain.load(source)
    assert len(out.wave) == len(original.wave)
    assert median_f0(out.wave, out.rate) == pytest.approx(HIGH.f0_hz, rel=0.15)
