"""Voice conversion end to end on synthetic voices with known pitch and timbre."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import soundfile as sf
from conftest import held_out_voices

from styletx.audio.metrics import mcd, median_f0
from styletx.audio.synth import HIGH, LOW, utterance

RATE = 22050
TINY_VOICE = ("--preset", "tiny", "--device", "cpu", "--log-every", "50")


@pytest.fixture(scope="module")
def voice_run(voices, tmp_path_factory):
    import styletx

    run = tmp_path_factory.mktemp("voice") / "run"
    styletx.train(voices["a"], voices["b"], run, model="cyclegan", preset="tiny",  # match:
                  settings=styletx.TrainSettings(steps=300, device="cpu", progress=False,
                                                 preview_every=300, save_every=300))  # test_match
    return run


@pytest.mark.slow
def test_tiny_voice_model_moves_pitch_and_envelope_towards_the_target(voice_run, voices,
                                                                      tmp_path):
    import styletx

    styletx.load_run(voice_run, device="cpu").convert_files([voices["test_a"]], tmp_path / "out")
    for name, source, converted, truth, rate in held_out_voices(
            voices["test_a"], tmp_path / "out", voices["test_b"]):
        assert rate == RATE and abs(len(converted) - len(source)) < 256
        before, after = mcd(source, truth, RATE), mcd(converted, truth, RATE)
        f0 = median_f0(converted, RATE)
        print(f"{name}: MCD {before:.2f} -> {after:.2f} dB, F0 {median_f0(source, RATE):.0f}"
              f" -> {f0:.0f} Hz (target {median_f0(truth, RATE):.0f})")
        assert after < before - 0.5
        assert abs(np.log(f0 / HIGH.f0_hz)) < abs(np.log(f0 / LOW.f0_hz))  # nearer the target


@pytest.mark.skipif(importlib.util.find_spec("pyworld") is None,
                    reason="pyworld is not installed")  # .ci/run installs it
def test_vocoder_world_converts_at_the_targets_pitch_and_images_refuse_it(voice_run, voices,
                                                                          trained_run, styletx,
                                                                          tmp_path):
    import styletx as api

    assert np.exp(api.load_run(voice_run).encoders["b"].pitch[0]) == pytest.approx(
        HIGH.f0_hz, rel=0.1)  # fitted in training
    for vocoder in ("world", "griffinlim"):
        result = styletx("convert", voice_run, voices["test_a"], "-o", tmp_path / vocoder,
                         "--device", "cpu", "--vocoder", vocoder)
        assert result.exit_code == 0, result.stderr
    for name, source, converted, truth, _ in held_out_voices(
            voices["test_a"], tmp_path / "world", voices["test_b"]):
        griffin_lim, _ = sf.read(tmp_path / "griffinlim" / name, dtype="float32")
        assert len(converted) == len(source) == len(griffin_lim)
        assert np.corrcoef(converted, griffin_lim)[0, 1] < 0.9  # re-synthesised, not GL's
        assert mcd(converted, truth, RATE) < mcd(source, truth, RATE) - 0.5
        assert median_f0(converted, RATE) == pytest.approx(HIGH.f0_hz, rel=0.1)
    (tmp_path / "hiss").mkdir()  # nothing voiced: written as Griffin-Lim's, and said so
    sf.write(tmp_path / "hiss" / "hiss.wav",
             0.1 * np.random.default_rng(0).standard_normal(RATE).astype(np.float32), RATE)
    hiss = styletx("convert", voice_run, tmp_path / "hiss", "-o", tmp_path / "hissed",
                   "--device", "cpu", "--vocoder", "world")
    assert hiss.exit_code == 0, hiss.stderr
    assert "Warning: hiss.wav: too few voiced frames for --vocoder world" in hiss.stderr
    refused = styletx("convert", trained_run, voices["test_a"], "-o", tmp_path / "img",
                      "--vocoder", "world", "--device", "cpu")
    assert refused.exit_code == 2 and len(refused.error_lines) == 1
    assert "--vocoder is for spectrogram voice runs" in refused.error_lines[0]
    assert not (tmp_path / "img").exists()


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


def test_a_recording_longer_than_a_piece_is_converted_piece_by_piece(voice_run, tmp_path,
                                                                      monkeypatch):
    """Pieces cut at pauses, each converted alone (bounded memory), joined: the whole length,
    and the same voice as converting it whole; the Python API converts it so too."""
    from test_audio import spoken_with_pauses

    import styletx
    from styletx.audio import pieces_at_pauses
    from styletx.plugins.audio import AudioDomain

    wave, _ = spoken_with_pauses()
    sf.write(tmp_path / "long.wav", wave, RATE)
    run = styletx.load_run(voice_run, device="cpu")
    run.convert_files([tmp_path / "long.wav"], tmp_path / "whole")
    cut = []
    monkeypatch.setattr(AudioDomain, "conversion_pieces", lambda self, sample: cut.append(1) or
                        pieces_at_pauses(sample, seconds=3.5, window=1.2))
    report = run.convert_files([tmp_path / "long.wav"], tmp_path / "pieces")
    assert not report.failed and cut
    whole, _ = sf.read(tmp_path / "whole" / "long.wav", dtype="float32")
    pieces, rate = sf.read(tmp_path / "pieces" / "long.wav", dtype="float32")
    assert rate == RATE and abs(len(pieces) - len(wave)) <= 4  # each piece rounds alone
    print(f"MCD pieces against whole: {mcd(pieces, whole, RATE):.2f} dB")
    assert mcd(pieces, whole, RATE) < 0.5 * mcd(wave, whole, RATE)
    read = run.domain.load(tmp_path / "long.wav")  # 16-bit, as convert_files read it
    api = run.convert_sample(read)
    assert np.abs(api.wave - pieces).max() <= 1 / 32768


def test_an_encoder_failing_on_a_piece_names_the_recording(voice_run, tmp_path, monkeypatch):
    """An encoder's bad output on one piece of a long recording said which encoder, not
    which file (a plain recording's said both)."""
    from test_audio import spoken_with_pauses

    import styletx
    from styletx.audio import pieces_at_pauses
    from styletx.contract.errors import StyletxError
    from styletx.plugins.audio import AudioDomain

    wave, _ = spoken_with_pauses()
    sf.write(tmp_path / "long.wav", wave, RATE)
    run = styletx.load_run(voice_run, device="cpu")
    monkeypatch.setattr(AudioDomain, "conversion_pieces",
                        lambda self, sample: pieces_at_pauses(sample, seconds=3.5, window=1.2))
    encoder = run.encoders["a"]
    monkeypatch.setattr(encoder, "encode", lambda sample: type(encoder).encode(
        encoder, sample).fill_(float("nan")))
    with pytest.raises(StyletxError, match=f"^{tmp_path / 'long.wav'}: the mel encoder's "
                                           "encode gave NaN or infinite values"):
        run.convert_files([tmp_path / "long.wav"], tmp_path / "out")
    assert not (tmp_path / "out" / "long.wav").exists()


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
    assert f"{a}: 6 of 7 readable file(s) can be trained on" in result.stderr
    for side in "AB":  # each side's decoder fit says whose it is
        assert any(line.startswith(f"{side}: mel decoder: step ")
                   for line in result.stderr.splitlines()), result.stderr


def test_a_clipped_recording_is_named_before_training(voices, tmp_path, styletx):
    """A recording made too loud (flat tops at full scale) would teach the model distortion:
    training names it, and only it, then trains on everything."""
    import shutil

    a = shutil.copytree(voices["a"], tmp_path / "a")
    first = sorted(a.glob("*.flac"))[0]
    wave, rate = sf.read(first, dtype="float32")
    sf.write(first, np.clip(wave * 1.5 / np.abs(wave).max(), -1, 1), rate)
    result = styletx("train", a, voices["b"], "--out", tmp_path / "run", "--preset", "tiny",
                     "--steps", "1", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if ": clipped: " in line]
    assert len(warned) == 1 and warned[0].startswith(f"Warning: {first}: clipped: "), warned
    assert warned[0].endswith("% of its samples flat at its peak; the model learns it as "
                              "part of the style (leave the file out, or fix it)")


def test_a_short_or_quiet_clip_is_not_called_clipped():
    """A 10 ms clip had 0.6 % of its samples "at full scale" (its one peak sample), a
    one-sample file 100 %; only flat tops count now."""
    from styletx.plugins.audio import CLIPPED_SHARE, clipped_share

    t = np.arange(220, dtype=np.float32) / 22050  # 10 ms
    assert clipped_share(0.3 * np.sin(2 * np.pi * 200 * t)) == 0.0
    assert clipped_share(np.array([0.4], np.float32)) == 0.0
    clipped = np.clip(1.5 * np.sin(2 * np.pi * 200 * np.arange(22050) / 22050), -1, 1)
    assert clipped_share(clipped.astype(np.float32)) > 100 * CLIPPED_SHARE


def test_a_folder_of_only_short_recordings_says_so(voices, tmp_path, styletx):
    """Not "4 usable audio files" and then all four skipped: the files are readable, and the
    error says that none of them is long enough, before the decoders' fit (half a minute
    with the fast preset) rather than after it."""
    a = tmp_path / "a"
    a.mkdir()
    for i in range(4):
        sf.write(a / f"short{i}.flac", utterance(LOW, 0.3, seed=i), RATE)
    result = styletx("train", a, voices["b"], "--out", tmp_path / "run", "--preset", "tiny",
                     "--steps", "1", "--device", "cpu")
    assert result.exit_code == 2
    assert "4 readable audio file(s)" in result.stderr
    assert result.error_lines == [f"Error: {a}: none of its 4 readable file(s) can be trained "
                                  "on (4 shorter than one training segment (64 frames): use "
                                  "longer files or a smaller --size)"]
    assert "mel decoder" not in result.stderr
    assert sum("shorter than one training segment" in line
               for line in result.warning_lines) == 4, result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("problem, make", [
    ("empty file", lambda p: p.write_bytes(b"")),
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


@pytest.mark.parametrize("fmt, problem", [("mp3", "audio is not written as mp3"),
                                          ("png", "not an audio format")])
def test_a_format_audio_is_not_written_in_is_refused_before_any_file(voice_run, voices,
                                                                     tmp_path, styletx, fmt,
                                                                     problem):
    """--format mp3 (a format audio is read in) failed at the first file's write, after its
    conversion, naming a temporary file; png listed mp3 and ogg as formats."""
    result = styletx("convert", voice_run, voices["test_a"], "-o", tmp_path / "out",
                     "--format", fmt)
    assert result.exit_code == 2
    assert result.error_lines == [f"Error: --format {fmt}: {problem} (it writes wav, flac)"]
    assert not (tmp_path / "out").exists()

@pytest.mark.parametrize("normalize", ["loudness", "peak"])
def test_a_silent_input_converts_to_silence(voice_run, voices, tmp_path, styletx, normalize):
    """It was refused (exit 1), so one empty clip failed a batch; its output is silence as long
    as the input, never Griffin-Lim's hiss scaled up."""
    quiet = tmp_path / "in" / "quiet.wav"
    quiet.parent.mkdir()
    sf.write(quiet, np.zeros(RATE // 2, np.float32), RATE)
    good = voices["test_a"] / "held000.flac"
    result = styletx("convert", voice_run, quiet, good, "-o", tmp_path / "out", "--normalize",
                     normalize)
    assert result.exit_code == 0, result.stderr
    out, rate = sf.read(tmp_path / "out" / "quiet.wav")
    assert len(out) == RATE // 2 and rate == RATE and not out.any()
    assert np.abs(sf.read(tmp_path / "out" / "held000.flac")[0]).max() > 0.01


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


def test_encoder_set_changes_the_encoders_settings_and_a_resume_keeps_them(voices, tmp_path,
                                                                          styletx):
    """--encoder-set n_mels=40: both sides' mel encoders, the generator's bins and config.json
    follow it; a resume with another value is refused, with the same value goes on, and the
    run converts with the saved settings."""
    import json

    run = tmp_path / "run"
    args = ("train", voices["a"], voices["b"], "--out", run, "--model", "cyclegan",
            "--preset", "tiny", "--device", "cpu", "--steps")
    result = styletx(*args, "1", "--encoder-set", "n_mels=40",
                     "--encoder-set", "decoder_epochs=0")
    assert result.exit_code == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    for side in "ab":
        assert config["encoders"][side]["params"]["n_mels"] == 40
        assert config["encoders"][side]["params"]["decoder_epochs"] == 0
    assert config["shapes"]["a"][1] == 40 and config["config"]["bins"] == 40
    refused = styletx(*args, "2", "--encoder-set", "n_mels=80")
    assert refused.exit_code == 2 and refused.error_lines == [
        f"Error: {run} was trained with the mel encoder's n_mels=40, not the --encoder-set "
        "n_mels=80; leave it out to resume, or use a new --out"]
    assert styletx(*args, "2", "--encoder-set", "n_mels=40").exit_code == 0
    assert json.loads((run / "config.json").read_text())["step"] == 2
    converted = styletx("convert", run, voices["test_a"] / "held000.flac", "-o", tmp_path / "out")
    assert converted.exit_code == 0, converted.stderr


@pytest.mark.parametrize("setting, error", [
    ("n_mel=40", "--encoder-set n_mel: no audio encoder has such a setting (`styletx plugins` "
                 "lists each encoder's)"),
    ("n_mels=40.5", "--encoder-set n_mels=40.5: the mel encoder's n_mels is a whole number "
                    "(default 128)"),
    ("n_fft=128", "mel encoder: need n_fft >= hop >= 1 (n_fft=128, hop=256)"),
    ("log_floor=0", "mel encoder: need log_floor > 0 (log_floor=0)"),
    ("n_mels", "--encoder-set 'n_mels': expected KEY=VALUE"),
    # the world encoder's: refused once the files have chosen the domain's encoder (mel)
    ("frame_period=5", "--encoder-set frame_period: the mel encoder has no such setting (its "
                       "settings: rate, n_fft, hop, n_mels, fmin, fmax, log_floor, gl_iters, "
                       "decoder_epochs); --encoder world takes it"),
])
def test_a_bad_encoder_setting_is_refused(voices, tmp_path, styletx, monkeypatch, setting,
                                          error):
    """One line naming the setting; before the files are read where the setting is wrong for
    every encoder that could be chosen."""
    import sys

    if not setting.startswith("frame_period"):
        prepare = sys.modules["styletx.engine.training.prepare"]  # (the package's name for
        monkeypatch.setattr(prepare, "load_data", None)  # it is its function): reading fails
    result = styletx("train", voices["a"], voices["b"], "--out", tmp_path / "run", "--preset",
                     "tiny", "--encoder-set", setting)
    assert result.exit_code == 2 and result.error_lines == [f"Error: {error}"], result.stderr
    assert not (tmp_path / "run").exists()


# -- paired voices (pix2pix): parallel utterances at different paces, aligned by DTW ------------

@pytest.fixture(scope="module")
def parallel(tmp_path_factory):
    """LOW and HIGH saying the same texts, HIGH 25 % slower, paired by file name."""
    from styletx.audio.synth import write_parallel_voice_folders

    return write_parallel_voice_folders(tmp_path_factory.mktemp("parallel"), n_train=6,
                                        n_test=2, seconds=2.0, tempo_b=0.8)


def test_dtw_path_follows_the_change_of_pace():
    """The same voice and text at tempo 1 and 0.8: an aligned frame of the slow version sits at
    1 / 0.8 times the position in the fast one. Measured error: median under 2 frames, 95th
    percentile 5.75 (inside steady vowels every frame matches about equally well); without
    warping the sounds drift apart by up to a quarter of the length, ~40 frames."""
    from styletx.engine.pairs import dtw_path, warp
    from styletx.plugins.audio import AudioSample, MelEncoder

    fast = AudioSample(utterance(LOW, 2.0, seed=1, text_seed=3), RATE)
    slow = AudioSample(utterance(LOW, 2.0, seed=1, text_seed=3, tempo=0.8), RATE)
    encoder = MelEncoder()
    encoder.fit([fast, slow])
    x, y = encoder.encode(fast), encoder.encode(slow)
    path = dtw_path(x, y)
    assert path[0].tolist() == [0, 0] and path[-1].tolist() == [x.shape[-1] - 1, y.shape[-1] - 1]
    assert np.all(np.diff(path, axis=0) >= 0)  # monotonic
    voiced = x[0].mean(0)[path[:, 0]] > -1  # silence may align anywhere: judge the sounds
    error = np.abs(path[voiced, 1] - path[voiced, 0] / 0.8)
    assert np.median(error) < 2 and np.percentile(error, 95) < 8
    warped_x, warped_y = warp(x, y, path)
    assert warped_x.shape == warped_y.shape == (1, encoder.bins, len(path))


@pytest.mark.slow
def test_tiny_pix2pix_on_parallel_voices(parallel, tmp_path, styletx):
    """Measured (300 steps, tiny): MCD 6.07 -> 2.17 dB and F0 error 1315 -> 267 cents on the two
    held-out sentences. The alignment is computed once and cached in the run folder."""

    from styletx.engine.evaluate import evaluate

    run = tmp_path / "run"
    first = styletx("train", parallel["a"], parallel["b"], "--model", "pix2pix", *TINY_VOICE,
                    "--steps", "150", "--out", run)
    assert first.exit_code == 0, first.stderr
    assert "found 6 pair(s)" in first.stderr and "aligned 6 pair(s) in time" in first.stderr
    assert (run / "alignment.safetensors").is_file()
    again = styletx("train", parallel["a"], parallel["b"], "--model", "pix2pix", *TINY_VOICE,
                    "--steps", "300", "--out", run)  # resumed: the cached alignment is reused
    assert again.exit_code == 0, again.stderr
    assert "resuming" in again.stderr and "aligned" not in again.stderr
    result = evaluate(run, parallel["test_a"], parallel["test_b"], device="cpu")
    means = result.means()
    assert means["converted"]["mcd_db"] < means["baseline"]["mcd_db"] - 2.0
    assert means["converted"]["f0_rmse_cents"] < means["baseline"]["f0_rmse_cents"] / 2


@pytest.mark.slow
def test_evaluate_scores_the_voice_run(voice_run, voices, styletx):
    """The same evaluate command on the unpaired voice model, on the same kind of test pairs."""
    import json

    result = styletx("evaluate", voice_run, voices["test_a"], voices["test_b"], "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metrics"] == {"mcd_db": "lower", "f0_rmse_cents": "lower"}
    mean = report["mean"]
    assert mean["converted"]["mcd_db"] < mean["baseline"]["mcd_db"]


def test_evaluate_warns_of_a_pair_that_cannot_be_the_same_words(voice_run, voices, styletx,
                                                                 tmp_path):
    """A pair three times the other's length (a misnamed file) is still scored, with a warning
    naming it; the pairs of equal words are not warned about."""
    import shutil

    test_b = shutil.copytree(voices["test_b"], tmp_path / "test_b")
    first, second = sorted(test_b.glob("*.flac"))
    wave, rate = sf.read(first)
    sf.write(first, np.concatenate([wave] * 3), rate)
    result = styletx("evaluate", voice_run, voices["test_a"], test_b, "--json")
    assert result.exit_code == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "same words" in line]
    assert warned == [f"Warning: {first.stem}: the input is {len(wave) / rate:.1f} s long and "
                      f"its pair {3 * len(wave) / rate:.1f} s: are they the same words? the "
                      "scores assume so"]
    assert len(json.loads(result.stdout)["pairs"]) == 2


# -- vaegan on voices -----------------------------------------------------------------------------
def test_vaegan_trains_converts_and_runs_its_latent_tools_on_voices(voices, styletx, tmp_path):
    """The plumbing of a voice VAE/GAN (a few steps of small networks): convert, evaluate, and
    sample / traverse / score writing spectrogram pictures with a clip per tile."""
    run = tmp_path / "run"
    small = ("--set", "ngf=4", "--set", "ndf=4")
    for steps in ("2", "4"):  # the second call resumes
        result = styletx("train", voices["a"], voices["b"], "--model", "vaegan", *TINY_VOICE,
                         *small, "--steps", steps, "--out", run)
        assert result.exit_code == 0, result.stderr
    assert json.loads((run / "config.json").read_text())["translator"] == "vaegan"
    held = sorted(voices["test_a"].iterdir())[0]
    result = styletx("convert", run, held, "-o", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    (converted,) = (tmp_path / "out").iterdir()
    assert abs(sf.info(converted).duration - sf.info(held).duration) < 0.05
    result = styletx("evaluate", run, voices["test_a"], voices["test_b"], "--json")
    assert result.exit_code == 0, result.stderr
    assert set(json.loads(result.stdout)["mean"]["converted"]) == {"mcd_db", "f0_rmse_cents"}

    result = styletx("sample", run, "--domain", "b", "-n", "3", "-o", tmp_path / "samples",
                     "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert written == ["samples-a0.wav", "samples-a1.wav", "samples-a2.wav", "samples.png"]
    assert sf.info(tmp_path / "samples" / "samples-a0.wav").frames > 0

    result = styletx("traverse", run, held, "--dims", "0,2", "--steps", "3", "-o",
                     tmp_path / "walk", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    names = {p.name for p in (tmp_path / "walk").iterdir()}
    assert {"dim00.png", "dim02.png"} <= names
    assert sum(name.endswith(".wav") for name in names) == 2 * 3  # a clip per tile
    duration = sf.info(held).duration
    for clip in (tmp_path / "walk").glob("*.wav"):  # each tile is the whole input, walked
        assert abs(sf.info(clip).duration - duration) < 0.1

    result = styletx("score", run, voices["test_a"], voices["b"], "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["inputs"]) == len(list(voices["test_a"].iterdir())) + len(
        list(voices["b"].iterdir()))
    assert all(math.isfinite(item["score"]) for item in report["inputs"])


def test_converted_voice_keeps_the_loudness_and_the_pauses_of_its_source(voice_run, voices):
    """Output as loud as the input where the input sounds (within 1 dB), and silent where the
    input is silent, at any input level that leaves the output's peaks room; never above full
    scale (see test_peaks_are_turned_down_where_they_are for louder inputs)."""
    import styletx
    from styletx.audio import AudioSample
    from styletx.audio.encoder import PEAK

    run = styletx.load_run(voice_run, device="cpu")
    speech = sf.read(sorted(voices["test_a"].iterdir())[0], dtype="float32")[0]
    pause = np.zeros(RATE, np.float32)
    for level_db in (-30.0, -24.0, -6.0):  # -18: the output's peaks (1.7 x the input's)
        wave = np.concatenate([speech, pause, speech])  # pass full scale and are limited
        wave *= 10 ** (level_db / 20) / np.sqrt(np.mean(speech**2))
        out = run.convert_sample(AudioSample(wave, RATE)).wave
        assert len(out) == len(wave) and np.abs(out).max() <= PEAK
        sounding = np.r_[0 : len(speech) - RATE // 10, -len(speech) + RATE // 10 : 0]
        rms_db = 10 * np.log10(np.mean(out[sounding] ** 2) / np.mean(wave[sounding] ** 2))
        assert abs(rms_db) < 1.0 or level_db == -6.0, (level_db, rms_db)  # -6: peaks limited
        middle = out[len(speech) + RATE // 4 : len(speech) + 3 * RATE // 4]
        quiet_db = 10 * np.log10(np.mean(middle**2) / np.mean(out[sounding] ** 2) + 1e-20)
        assert quiet_db < -50, (level_db, quiet_db)


def test_peaks_are_turned_down_where_they_are():
    """A converted voice louder than full scale in places was scaled down as a whole when
    written: a minute of speech came out 5-6 dB quieter than its source for a few peaks. The
    limiter turns down only the ~40 ms around each peak."""
    from styletx.audio.encoder import LIMITER_WINDOW, PEAK, limit_peaks

    t = np.arange(2 * RATE) / RATE
    wave = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    burst = slice(RATE, RATE + RATE // 100)
    wave[burst] *= 4  # 10 ms at twice full scale
    out = limit_peaks(wave, RATE)
    assert out.dtype == np.float32 and np.abs(out).max() <= PEAK
    reach = int(LIMITER_WINDOW * RATE) + 1  # how far from a peak the gain may move
    away = np.r_[0 : burst.start - reach, burst.stop + reach : len(wave)]
    assert np.array_equal(out[away], wave[away])
    assert np.abs(out[burst]).max() > 0.9  # the peak itself at the ceiling, not silenced
    quiet = np.full(RATE, 0.5, np.float32)
    assert limit_peaks(quiet, RATE) is quiet  # nothing above the ceiling: untouched


def test_normalize_peak_scales_the_loudest_sample_and_images_refuse_it(voice_run, voices,
                                                                       trained_run, styletx,
                                                                       tmp_path):
    from styletx.audio.encoder import PEAK

    source = sorted(voices["test_a"].iterdir())[0]
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, sf.read(source, dtype="float32")[0] * 0.05, RATE)
    for normalize, out in (("peak", tmp_path / "peak"), ("loudness", tmp_path / "loud")):
        result = styletx("convert", voice_run, quiet, "-o", out, "--device", "cpu",
                         "--normalize", normalize)
        assert result.exit_code == 0, result.stderr
    peak = np.abs(sf.read(tmp_path / "peak" / "quiet.wav")[0]).max()
    loudness = np.abs(sf.read(tmp_path / "loud" / "quiet.wav")[0]).max()
    assert abs(peak - PEAK) < 1e-3 and loudness < 0.2  # the quiet input stays quiet by default
    refused = styletx("convert", trained_run, source, "-o", tmp_path / "img", "--normalize",
                      "peak", "--device", "cpu")
    assert refused.exit_code == 2 and len(refused.error_lines) == 1
    assert "--normalize is for voice runs" in refused.error_lines[0]
    assert not (tmp_path / "img").exists()
