"""Voice conversion end to end on synthetic voices with known pitch and timbre."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from styletx.synthvoice import HIGH, LOW, utterance, write_voice_folders
from styletx.voice_metrics import mcd, median_f0

RATE = 22050


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    return write_voice_folders(tmp_path_factory.mktemp("voices"), n_train=6, n_test=2,
                               seconds=2.0)


@pytest.fixture(scope="module")
def voice_run(voices, tmp_path_factory):
    import styletx

    run = tmp_path_factory.mktemp("voice") / "run"
    styletx.train(voices["a"], voices["b"], run, preset="tiny",
                  settings=styletx.TrainSettings(steps=300, device="cpu", progress=False,
                                                 preview_every=300, save_every=300))
    return run


@pytest.mark.slow
def test_tiny_voice_model_moves_pitch_and_envelope_towards_the_target(voice_run, voices,
                                                                      tmp_path):
    import styletx

    styletx.load_run(voice_run, device="cpu").convert_files([voices["test_a"]], tmp_path / "out")
    for target in sorted(voices["test_b"].glob("*.flac")):
        source, _ = sf.read(voices["test_a"] / target.name, dtype="float32")
        converted, rate = sf.read(tmp_path / "out" / target.name, dtype="float32")
        truth, _ = sf.read(target, dtype="float32")
        assert rate == RATE and abs(len(converted) - len(source)) < 256
        before, after = mcd(source, truth, RATE), mcd(converted, truth, RATE)
        f0 = median_f0(converted, RATE)
        print(f"{target.name}: MCD {before:.2f} -> {after:.2f} dB, F0 {median_f0(source, RATE):.0f}"
              f" -> {f0:.0f} Hz (target {median_f0(truth, RATE):.0f})")
        assert after < before - 0.5
        assert abs(np.log(f0 / HIGH.f0_hz)) < abs(np.log(f0 / LOW.f0_hz))  # nearer the target


@pytest.mark.slow
def test_long_recording_is_converted_in_chunks_without_seams(voice_run, tmp_path):
    """A file several times longer than the conversion chunk: same length out, and no spike at
    the chunk borders (compared with the signal's typical sample-to-sample change)."""
    import styletx

    run = styletx.load_run(voice_run, device="cpu")
    chunk, hop = run.domain.chunk_frames, run.encoders["a"].params["hop"]
    wave = utterance(LOW, seconds=4.2 * chunk * hop / RATE, seed=5)
    sf.write(tmp_path / "long.wav", wave, RATE)
    report = run.convert_files([tmp_path / "long.wav"], tmp_path / "out")
    assert not report.failed
    out, rate = sf.read(tmp_path / "out" / "long.wav", dtype="float32")
    assert rate == RATE and abs(len(out) - len(wave)) < hop
    jumps = np.abs(np.diff(out))
    borders = [(k * (chunk - run.domain.chunk_overlap) + run.domain.chunk_overlap // 2) * hop
               for k in range(1, 4)]
    typical = np.percentile(jumps, 99.9)
    for b in borders:
        assert jumps[b - 2 * hop : b + 2 * hop].max() <= 1.5 * typical


def test_short_recordings_are_reported_and_skipped(voices, tmp_path, styletx):
    import shutil

    a = shutil.copytree(voices["a"], tmp_path / "a")
    sf.write(a / "tiny.flac", utterance(LOW, 0.3, seed=1), RATE)
    result = styletx("train", a, voices["b"], "--out", tmp_path / "run", "--preset", "tiny",
                     "--steps", "1", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert any("tiny.flac" in line and "shorter than one training segment" in line
               for line in result.stderr.splitlines())
    assert "min after trimming silence" in result.stderr


@pytest.mark.parametrize("problem, make", [
    ("empty file", lambda p: p.write_bytes(b"")),
    ("pure silence", lambda p: sf.write(p, np.zeros(RATE, np.float32), RATE)),
    ("not an audio file", lambda p: p.write_text("words, not sound")),
])
def test_bad_audio_is_reported_by_convert(voice_run, voices, tmp_path, styletx, problem, make):
    bad = tmp_path / "in" / "bad.wav"
    bad.parent.mkdir()
    make(bad)
    good = voices["test_a"] / "held000.flac"
    result = styletx("convert", voice_run, bad, good, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert any("bad.wav" in line and problem in line for line in result.error_lines)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["held000.flac"]


def test_stft_encoder_builds_the_generator_for_its_bins(voices, tmp_path):
    import json

    import styletx

    styletx.train(voices["a"], voices["b"], tmp_path / "run", preset="tiny", encoder="stft",
                  settings=styletx.TrainSettings(steps=1, device="cpu", progress=False))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["encoders"]["a"]["name"] == "stft" and config["config"]["bins"] == 513
    assert config["encoders"]["b"]["params"]["n_fft"] == 1024  # feature settings recorded
    report = styletx.load_run(tmp_path / "run", device="cpu").convert_files(
        [voices["test_a"] / "held000.flac"], tmp_path / "out")
    assert report.converted and not report.failed
