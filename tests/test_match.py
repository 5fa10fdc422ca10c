"""The match translator: voice conversion by frame matching on a content code learnt from the
two folders (plugins/match.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import held_out_voices

from styletx.audio.metrics import mcd, median_f0
from styletx.audio.synth import HIGH, LOW

RATE = 22050


@pytest.fixture(scope="module")
def match_run(voices, tmp_path_factory):
    import styletx

    run = tmp_path_factory.mktemp("match") / "run"
    styletx.train(voices["a"], voices["b"], run, model="match", preset="tiny",
                  settings=styletx.TrainSettings(steps=200, device="cpu", progress=False,
                                                 preview_every=100, save_every=100))
    return run


def test_tiny_match_model_converts_both_ways_towards_the_target(match_run, voices, tmp_path):
    """Known answer: the held-out sentences said by both synthetic voices. A -> B must come
    measurably nearer B's timbre and pitch than the untouched source, and B -> A nearer A's."""
    import styletx

    model = styletx.load_run(match_run, device="cpu")
    for source, target, voice in (("test_a", "test_b", HIGH), ("test_b", "test_a", LOW)):
        out = tmp_path / source
        model.convert_files([voices[source]], out, direction=f"{source[-1]}2{target[-1]}")
        for name, original, converted, truth, rate in held_out_voices(voices[source], out,
                                                                      voices[target]):
            assert rate == RATE and abs(len(converted) - len(original)) < 256
            before, after = mcd(original, truth, RATE), mcd(converted, truth, RATE)
            f0 = median_f0(converted, RATE)
            print(f"{source}/{name}: MCD {before:.2f} -> {after:.2f} dB, F0 {f0:.0f} "
                  f"Hz (target {voice.f0_hz:.0f})")
            assert after < before - 0.5
            other = LOW if voice is HIGH else HIGH
            assert abs(np.log(f0 / voice.f0_hz)) < abs(np.log(f0 / other.f0_hz))


def test_the_matching_sets_and_codes_are_saved_with_the_run(match_run):
    """Training fills each side's set after the last step (B's frames for a2b, A's for b2a),
    saves it with the weights, and a loaded run converts with it."""
    import styletx

    translator = styletx.load_run(match_run, device="cpu").translator
    for m in (translator.M_A, translator.M_B):
        assert len(m.bank) > 100 and m.keys.shape == (len(m.bank), 8)
    assert all(e.scale.item() != 1.0 for e in translator.encoders)  # the codes' spread, fitted
    log = [json.loads(line) for line in (match_run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "step" in r]
    assert steps and max(steps) == 200


def test_translate_and_export_need_the_sets(match_run):
    import styletx
    from styletx import StyletxError

    translator = styletx.load_run(match_run, device="cpu").translator
    x = torch.randn(1, 1, translator.config.bins, 37)
    assert translator.translate(x, "a2b").shape == x.shape  # any length
    translator.M_A.reset()
    for call in (lambda: translator.translate(x, "a2b"), lambda: translator.export_module("a2b")):
        with pytest.raises(StyletxError, match="no matching sets"):
            call()


def test_match_join_converts_along_runs_of_the_targets_recordings(match_run, voices, tmp_path,
                                                                   monkeypatch):
    """match_join > 0 (the default): each converted frame is one real frame of B, chosen so
    that the frames follow on from each other (mostly B's own next frame; where not, one like
    it); still nearer B than the source; a negative join is refused."""
    import styletx
    import styletx.audio.matching as matching_module
    from styletx import UsageError
    from styletx.engine.model import make_config
    from styletx.plugins.match import Match

    paths = []
    search = matching_module._least_cost_path
    monkeypatch.setattr(matching_module, "_least_cost_path",
                        lambda *args: paths.append(search(*args)) or paths[-1])
    model = styletx.load_run(match_run, device="cpu")
    matching = model.translator.M_A
    source = model.encoders["a"].encode(model.domain.load(sorted(voices["test_a"].glob(
        "*.flac"))[0]))[None]
    codes = model.translator.code(source)
    matching.k, matching.join = 1, 1.0  # one candidate: the nearest frame alone
    matching(codes)
    matching.k = 8
    matching(codes)
    alone, chosen = (path[0] for path in paths)  # (1, T) each: one utterance

    def seams(indices):  # how unlike B's own next frame each frame is, and how often it is it
        successors = matching.bank[(indices[:-1] + 1).clamp_max(len(matching.bank) - 1)]
        unlike = (successors - matching.bank[indices[1:]]).pow(2).sum(-1).mean().item()
        return unlike, (indices[1:] == indices[:-1] + 1).float().mean().item()

    (unlike, continuing), (unlike_alone, continuing_alone) = seams(chosen), seams(alone)
    print(f"seams {unlike:.1f} against {unlike_alone:.1f} for the nearest alone; continuing "
          f"{continuing:.2f} against {continuing_alone:.2f}")
    assert unlike < 0.7 * unlike_alone and continuing > continuing_alone
    config = model.translator.config  # converting as the run does: the path, by default
    matching.k, matching.join = config.match_k, config.match_join
    assert config.match_join == 2.0
    model.convert_files([voices["test_a"]], tmp_path / "out")
    for _, original, converted, truth, _ in held_out_voices(voices["test_a"], tmp_path / "out",
                                                            voices["test_b"]):
        assert mcd(converted, truth, RATE) < mcd(original, truth, RATE) - 0.5
    for bad, message in (({"match_join": -1}, "match_join must be a number >= 0"),
                         ({"match_join": float("nan")}, "match_join must be a number >= 0"),
                         ({"match_k": 0}, "match_k must be at least 1"),
                         ({"match_context": -1}, "match_context must be from 0 to 32"),
                         ({"match_context": 100_000}, "match_context must be from 0 to 32")):
        with pytest.raises(UsageError, match=message):
            make_config(Match, "tiny", bad, "audio")


def test_convert_set_changes_how_one_command_converts(match_run, voices, styletx, tmp_path):
    """`styletx convert --set` changes the conversion-only settings for that command: the
    files come out as a run with those settings converts them; config.json is not touched;
    settings that shaped the weights, or of the wrong type, or a k larger than the matching
    set are refused in one line, exit 2, before anything is written."""
    import soundfile as sf

    import styletx as api

    saved = (match_run / "config.json").read_text()
    source = sorted(voices["test_a"].glob("*.flac"))[0]
    result = styletx("convert", match_run, source, "-o", tmp_path / "mean", "--set",
                     "match_join=0", "--set", "match_k=6")
    assert result.exit_code == 0, result.stderr
    assert (match_run / "config.json").read_text() == saved
    model = api.load_run(match_run, device="cpu", settings={"match_join": 0.0, "match_k": 6})
    assert (model.translator.M_A.k, model.translator.M_A.join) == (6, 0.0)
    model.convert_files([source], tmp_path / "api")
    assert styletx("convert", match_run, source, "-o", tmp_path / "plain").exit_code == 0
    mean, api_mean, plain = (sf.read(tmp_path / folder / source.name)[0]
                             for folder in ("mean", "api", "plain"))
    assert np.array_equal(mean, api_mean) and not np.array_equal(mean, plain)
    for setting, message in (("content_dim=4", "--set content_dim: not a setting the match "
                                               "model can change when converting"),
                             ("match_join=much", "match expects float"),
                             ("match_k=100000", "k must fit both directions' sets"),
                             ("match_context=100000", "match_context must be from 0 to 32")):
        refused = styletx("convert", match_run, source, "-o", tmp_path / "no", "--set", setting)
        assert refused.exit_code == 2 and refused.error_lines == [refused.stderr.strip()]
        assert message in refused.stderr
    assert not (tmp_path / "no").exists()


def test_evaluate_set_measures_a_variant_without_touching_the_report(match_run, voices,
                                                                      styletx):
    """`styletx evaluate --set` scores the run converted with those settings (here the mean of
    the nearest frames in place of the path) and leaves the run's own evaluation as it was."""
    default = styletx("evaluate", match_run, voices["test_a"], voices["test_b"], "--json")
    assert default.exit_code == 0, default.stderr
    saved = (match_run / "evaluation-a2b.json").read_text()
    variant = styletx("evaluate", match_run, voices["test_a"], voices["test_b"], "--json",
                      "--set", "match_join=0", "--set", "match_k=2")
    assert variant.exit_code == 0, variant.stderr
    assert "not added to the run's report" in variant.stderr
    assert (match_run / "evaluation-a2b.json").read_text() == saved
    means = [json.loads(r.stdout)["mean"]["converted"]["mcd_db"] for r in (default, variant)]
    assert means[0] != means[1]


def test_audio_trains_match_by_default_and_a_longer_run_refits_its_sets(voices, tmp_path,
                                                                        styletx):
    """No --model: audio folders train match. Trained further, a finished run refits its sets
    at the new end (their codes are the encoders' at the end, not the old ones')."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    first = styletx("train", voices["a"], voices["b"], "--out", run, "--preset", "tiny",
                    "--steps", "40", "--device", "cpu")
    assert first.exit_code == 0, first.stderr
    assert json.loads((run / "config.json").read_text())["translator"] == "match"
    keys_before = load_file(run / "model.safetensors")["net.M_A.keys"]
    again = styletx("train", voices["a"], voices["b"], "--out", run, "--steps", "80",
                    "--device", "cpu")
    assert again.exit_code == 0, again.stderr
    keys_after = load_file(run / "model.safetensors")["net.M_A.keys"]
    assert keys_after.shape == keys_before.shape and not torch.equal(keys_after, keys_before)
    assert "resum" in (again.stdout + again.stderr).lower()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in log) == 80
    out = styletx("convert", run, voices["test_a"], "-o", tmp_path / "out")
    assert out.exit_code == 0, out.stderr
    assert len(list((tmp_path / "out").glob("*.flac"))) == 2



def test_a_match_run_stopped_by_ctrl_c_converts_and_resumes_exactly(voices, tmp_path,
                                                                    monkeypatch, styletx):
    """A match run stopped by Ctrl-C had no matching sets: "this model has no matching sets
    yet" until trained to its end (a trial's 1500 steps unusable). It fills them before the
    stop's checkpoint now; the resumed run still ends with the uninterrupted one's weights."""
    import os
    import signal

    from safetensors.torch import load_file

    import styletx as api
    from styletx.plugins.match import Match

    def settings(steps):
        return api.TrainSettings(steps=steps, device="cpu", progress=False, save_every=100)

    straight = tmp_path / "straight"
    api.train(voices["a"], voices["b"], straight, model="match", preset="tiny",
              settings=settings(20))
    original = Match.training_step

    def interrupt_at_10(self, batch, step):
        if step == 9:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, mid-step
        return original(self, batch, step)

    monkeypatch.setattr(Match, "training_step", interrupt_at_10)
    stopped = tmp_path / "stopped"
    with pytest.raises(api.TrainingInterrupted, match="step 10"):
        api.train(voices["a"], voices["b"], stopped, model="match", preset="tiny",
                  settings=settings(20))
    out = styletx("convert", stopped, voices["test_a"], "-o", tmp_path / "out")
    assert out.exit_code == 0, out.stderr
    monkeypatch.setattr(Match, "training_step", original)
    api.train(voices["a"], voices["b"], stopped, settings=settings(20))
    a, b = load_file(straight / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def test_match_refuses_images(data, styletx, tmp_path):
    result = styletx("train", data["a"], data["b"], "--out", tmp_path / "run", "--model",
                     "match", "--steps", "5")
    assert result.exit_code == 2
    assert result.error_lines == ["Error: the match model does not work on image files"]
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("declared", [("match_k", "match_kk"), "match_k"])
def test_a_plugin_that_declares_conversion_settings_wrongly_is_named(match_run, monkeypatch,
                                                                     declared):
    """Not fields of its Config, or a string (in which `in` finds substrings): one error
    naming the plugin, not a KeyError."""
    import styletx
    from styletx import StyletxError
    from styletx.plugins.match import Match

    monkeypatch.setattr(Match, "conversion_settings", declared)
    with pytest.raises(StyletxError, match="the match plugin's conversion_settings must be"):
        styletx.load_run(match_run, device="cpu", settings={"match_k": 4})


def test_a_preset_that_is_the_runs_under_another_name_resumes_it(voices, tmp_path, styletx):
    """match's fast preset is its default: resuming a run trained without --preset with
    --preset fast was refused as another preset."""
    run = tmp_path / "run"
    common = [voices["a"], voices["b"], "--out", run, "--model", "match", "--threads", "1"]
    assert styletx("train", *common, "--steps", "1").exit_code == 0
    resumed = styletx("train", *common, "--steps", "2", "--preset", "fast")
    assert resumed.exit_code == 0, resumed.stderr
    saved = json.loads((run / "config.json").read_text())
    assert (saved["step"], saved["preset"]) == (2, "default")
    tiny = styletx("train", *common, "--steps", "3", "--preset", "tiny")
    assert tiny.exit_code == 2 and "was trained with --preset default, not tiny" in tiny.stderr


def test_every_match_checkpoint_converts_and_training_is_unchanged(voices, tmp_path, styletx):
    """A damaged last weights file fell back to the checkpoint before it, which had no matching
    sets (filled only at the end): "this model has no matching sets yet", exit 2. Every
    checkpoint fills them now, and the weights trained are the same as with none between."""
    from safetensors.torch import load_file

    import styletx as api

    def train(run, save_every):
        api.train(voices["a"], voices["b"], run, model="match", preset="tiny",
                  settings=api.TrainSettings(steps=10, device="cpu", progress=False,
                                             save_every=save_every))

    train(tmp_path / "once", 100)
    train(tmp_path / "often", 4)
    a = load_file(tmp_path / "once" / "model.safetensors")
    b = load_file(tmp_path / "often" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    weights = tmp_path / "often" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = styletx("convert", tmp_path / "often", voices["test_a"], "-o", tmp_path / "out")
    assert out.exit_code == 0, out.stderr
    assert "using the previous checkpoint (step 8)" in out.stderr
