"""Paired training (pix2pix) end to end: pairing files, --aligned, bad pairs, evaluation, and a
known-answer image task; the voice version is in tests/test_voice.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from styletx.contract.errors import UsageError
from styletx.demo import make_paired_image_dataset
from styletx.engine.evaluate import evaluate
from styletx.engine.pairs import pair_files
from styletx.engine.training import TrainSettings, train
from styletx.plugins.image import ImageDomain

P2P = ("--model", "pix2pix", *TINY)
QUICK = ("--steps", "2", "--size", "16")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Paired scenes: b/ is the hidden ``ink`` transform of a/, under the same names."""
    return make_paired_image_dataset(tmp_path_factory.mktemp("pairs"), n_train=16, n_test=4,
                                     size=40)


@pytest.fixture(scope="module")
def p2p_run(pairs, tmp_path_factory):
    """A tiny pix2pix trained on the paired scenes (300 steps, about 30 s on 2 cores)."""
    run = tmp_path_factory.mktemp("p2p") / "run"
    train(pairs["a"], pairs["b"], run, model="pix2pix", preset="tiny",
          settings=TrainSettings(device="cpu", progress=False, preview_every=300))
    return run


@pytest.fixture
def messages(caplog):
    """The styletx log (the CLI stops it propagating to the root logger, where caplog listens)."""
    logger = logging.getLogger("styletx")
    logger.addHandler(caplog.handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)


def _save(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _pixels(seed, h=24, w=24, channels=3):
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# -- pairing by name ------------------------------------------------------------------------------

def test_pairs_match_by_relative_path_without_extension(tmp_path, messages):
    for i in range(7):
        _save(tmp_path / "a" / "x" / f"{i:03d}.png", _pixels(i))
    for i in range(2, 9):  # 000, 001 have no partner in b; 007, 008 none in a
        _save(tmp_path / "b" / "x" / f"{i:03d}.jpg", _pixels(i))
    _save(tmp_path / "b" / "y" / "000.jpg", _pixels(0))  # another folder: no partner of x/000
    found = pair_files(tmp_path / "a", tmp_path / "b", ImageDomain())
    assert [key for _, _, key in found.pairs] == ["x/002", "x/003", "x/004", "x/005", "x/006"]
    assert all(a.stem == b.stem and a.suffix == ".png" and b.suffix == ".jpg"
               for a, b, _ in found.pairs)
    assert [p.name for p in found.only_a] == ["000.png", "001.png"]
    assert [p.relative_to(tmp_path / "b").as_posix() for p in found.only_b] == [
        "x/007.jpg", "x/008.jpg", "y/000.jpg"]
    assert "found 5 pair(s)" in messages.text
    assert "2 file(s) in A_DIR" in messages.text and "x/000.png, x/001.png" in messages.text


def test_unmatched_files_are_listed_first_few_then_a_count(tmp_path, messages):
    for i in range(12):
        _save(tmp_path / "a" / f"a{i:02d}.png", _pixels(i))
    for i in range(4):
        _save(tmp_path / "a" / f"p{i}.png", _pixels(i))
        _save(tmp_path / "b" / f"p{i}.png", _pixels(i))
    pair_files(tmp_path / "a", tmp_path / "b", ImageDomain())
    assert "12 file(s) in A_DIR" in messages.text
    assert "a00.png, a01.png, a02.png, a03.png, a04.png and 7 more" in messages.text


def test_names_that_differ_only_in_case_get_a_hint(tmp_path, messages):
    for i in range(3):
        _save(tmp_path / "a" / f"IMG_{i}.png", _pixels(i))
    _save(tmp_path / "b" / "IMG_0.png", _pixels(0))
    _save(tmp_path / "b" / "img_1.png", _pixels(1))
    found = pair_files(tmp_path / "a", tmp_path / "b", ImageDomain())
    assert [key for _, _, key in found.pairs] == ["IMG_0"]
    assert "'IMG_1' and 'img_1' differ only in case" in messages.text
    (tmp_path / "b" / "IMG_0.png").rename(tmp_path / "b" / "img_0.png")
    with pytest.raises(UsageError, match="'IMG_0' and 'img_0' differ only in case"):
        pair_files(tmp_path / "a", tmp_path / "b", ImageDomain())


def test_names_in_another_unicode_form_pair(tmp_path, messages):
    """"Über straße" typed here (NFC) and copied from macOS (NFD, "U" + combining diaeresis)
    look the same and are the same pair."""
    import unicodedata

    for i, name in enumerate(("Über straße", "Café", "plain")):
        _save(tmp_path / "a" / f"{unicodedata.normalize('NFC', name)}.jpg", _pixels(i))
        _save(tmp_path / "b" / f"{unicodedata.normalize('NFD', name)}.png", _pixels(i))
    found = pair_files(tmp_path / "a", tmp_path / "b", ImageDomain())
    assert [key for _, _, key in found.pairs] == ["Café", "plain", "Über straße"]
    assert "no partner" not in messages.text


def test_same_name_twice_in_one_folder_is_refused(tmp_path):
    for name in ("001.png", "001.jpg"):
        _save(tmp_path / "a" / name, _pixels(1))
    _save(tmp_path / "b" / "001.png", _pixels(1))
    with pytest.raises(UsageError, match="001.jpg and 001.png have the same name|001.png and "
                                         "001.jpg have the same name"):
        pair_files(tmp_path / "a", tmp_path / "b", ImageDomain())


def test_folders_without_common_names(styletx, scenes, tmp_path):
    """The unpaired scene folders hold scene*.png in both... so rename one side's files."""
    for i in range(4):
        _save(tmp_path / "a" / f"summer{i}.png", _pixels(i))
        _save(tmp_path / "b" / f"winter{i}.png", _pixels(i))
    result = styletx("train", tmp_path / "a", tmp_path / "b", *P2P, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.error_lines == [result.stderr.strip()]  # one line
    assert "no file of A_DIR" in result.stderr and "relative path without extension" in (
        result.stderr)
    assert not (tmp_path / "run").exists()


def test_too_few_pairs_refuses_to_start(styletx, tmp_path):
    for i in range(3):
        _save(tmp_path / "a" / f"{i}.png", _pixels(i))
        _save(tmp_path / "b" / f"{i}.png", _pixels(i))
    result = styletx("train", tmp_path / "a", tmp_path / "b", *P2P, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert f"{tmp_path / 'a'} and {tmp_path / 'b'}: only 3 usable pair(s)" in result.stderr
    assert "at least 4" in result.stderr


def test_pair_with_a_corrupt_side_is_skipped_by_name(styletx, pairs, tmp_path):
    import shutil

    a = shutil.copytree(pairs["a"], tmp_path / "a")
    b = shutil.copytree(pairs["b"], tmp_path / "b")
    (b / "scene003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = styletx("train", a, b, *P2P, *QUICK, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "skipping the pair of" in result.stderr and "scene003.png" in result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith(("A: ", "B: "))]
    assert [line.endswith("(1 unusable file(s) skipped, named above)")
            for line in summary] == [False, True], summary


def test_pairs_of_different_sizes_are_resized_with_a_warning(styletx, tmp_path):
    for i in range(4):
        _save(tmp_path / "a" / f"{i}.png", _pixels(i, 24, 36))
        _save(tmp_path / "b" / f"{i}.png", _pixels(i, 24, 24, channels=1))  # gray, square
    result = styletx("train", tmp_path / "a", tmp_path / "b", *P2P, *QUICK,
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert ("4 pair(s) differ in size as scaled for training; B resized (stretched) to A's"
            in result.stderr)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["encoders"]["a"]["name"] == "rgb" and config["encoders"]["b"]["name"] == "gray"


def test_unpaired_model_still_trains_on_folders_with_other_names(styletx, scenes, tmp_path):
    result = styletx("train", scenes["a"], scenes["test_b"], *TINY, *QUICK,
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr


# -- --aligned ------------------------------------------------------------------------------------

def test_aligned_folder_trains_and_odd_widths_are_skipped(styletx, tmp_path):
    for i in range(4):
        _save(tmp_path / "ab" / f"{i}.png", _pixels(i, 24, 48))
    _save(tmp_path / "ab" / "odd.png", _pixels(9, 24, 47))
    result = styletx("train", tmp_path / "ab", "--aligned", *P2P, *QUICK,
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "odd.png: odd width 47" in result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["aligned"] is True and config["data"]["b"] is None
    # resume with the same command continues from the saved step
    again = styletx("train", tmp_path / "ab", "--aligned", *P2P, "--steps", "3", "--size", "16",
                    "--out", tmp_path / "run")
    assert again.exit_code == 0, again.stderr
    assert "resuming" in again.stderr and "(step 3)" in again.stdout


@pytest.mark.parametrize("args, message", [
    (("--aligned", "B"), "give no B_DIR"),
    (("--aligned", "--model", "cyclegan"), "--aligned is for paired models"),
    ((), "missing B_DIR"),
])
def test_aligned_usage_errors(styletx, tmp_path, args, message):
    for i in range(4):
        _save(tmp_path / "ab" / f"{i}.png", _pixels(i, 24, 48))
    (tmp_path / "B").mkdir()
    extra = [tmp_path / "B" if a == "B" else a for a in args]
    model = () if "--model" in args else ("--model", "pix2pix")
    result = styletx("train", tmp_path / "ab", *extra, *model, *TINY, *QUICK,
                     "--out", tmp_path / "run")
    assert result.exit_code == 2 and message in result.stderr


# -- quality with a known answer, and evaluation --------------------------------------------------

def test_tiny_pix2pix_beats_the_unconverted_input(p2p_run, pairs):
    """300 steps of the tiny preset on the ink task. Measured over data and training seeds 0, 1
    and 2 (held-out means): PSNR +6.0, +5.4 and +6.6 dB over the unconverted input, SSIM +0.24,
    +0.14 and +0.22; the thresholds keep headroom below the worst seed."""
    result = evaluate(p2p_run, pairs["test_a"], pairs["test_b"], device="cpu")
    means = result.means()
    assert len(result.scores) == 4 and not result.failed
    assert means["converted"]["psnr_db"] > means["baseline"]["psnr_db"] + 4.0
    assert means["converted"]["ssim"] > means["baseline"]["ssim"] + 0.08
    assert result.improved("psnr_db") == 4


def test_evaluate_cli_table_and_json(styletx, p2p_run, pairs):
    table = styletx("evaluate", p2p_run, pairs["test_a"], pairs["test_b"], "--device", "cpu")
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == ("a2b: each file of A_TEST converted and compared with its pair in "
                        "B_TEST")
    assert "psnr_db" in lines[1] and "ssim" in lines[1]
    assert lines[2].split() == ["pair", "converted", "unconverted", "converted", "unconverted"]
    assert [line.split()[0] for line in lines[3:8]] == [
        "held000", "held001", "held002", "held003", "mean"]
    report = json.loads(styletx("evaluate", p2p_run, pairs["test_a"], pairs["test_b"],
                                "--json", "--device", "cpu").stdout)
    gain = report["mean"]["converted"]["psnr_db"] - report["mean"]["baseline"]["psnr_db"]
    assert (f"psnr_db: higher is better; the conversion is better on 4 of 4 pair(s), by "
            f"{gain:+.3f} on average") in table.stdout
    assert report["metrics"] == {"psnr_db": "higher", "ssim": "higher"}
    assert [p["name"] for p in report["pairs"]] == ["held000", "held001", "held002", "held003"]
    mean = np.mean([p["converted"]["psnr_db"] for p in report["pairs"]])
    assert report["mean"]["converted"]["psnr_db"] == pytest.approx(mean)


def test_ctrl_c_in_evaluate_shows_the_pairs_scored_so_far(styletx, p2p_run, pairs,
                                                           monkeypatch):
    """Scores are not thrown away by an interrupt: the pairs done are shown (not added to the
    report, a partial table), and the exit code is Ctrl-C's."""
    from styletx.engine.convert import Run

    convert_sample, calls = Run.convert_sample, []

    def interrupted_at_the_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return convert_sample(self, *args, **kwargs)

    monkeypatch.setattr(Run, "convert_sample", interrupted_at_the_third)
    result = styletx("evaluate", p2p_run, pairs["test_a"], pairs["test_b"], "--device", "cpu")
    assert result.exit_code == 130
    rows = [line.split()[0] for line in result.stdout.splitlines()[3:6]]
    assert rows == ["held000", "held001", "mean"]
    assert "better on 2 of 2 pair(s)" in result.stdout
    assert result.error_lines == ["Error: interrupted after 2 of 4 pair(s); the scores above are "
                                  "of those 2 scored, not added to the run's report"]
    saved = p2p_run / "evaluation-a2b.json"  # an earlier whole evaluation's, if any
    assert not saved.exists() or "held003" in saved.read_text()


def test_evaluate_works_for_an_unpaired_model(styletx, trained_run, scenes):
    """The same command scores a CycleGAN run, so the two kinds of model can be compared."""
    result = styletx("evaluate", trained_run, scenes["test_a"], scenes["test_b"], "--json",
                     "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["pairs"]) == 3 and report["failed"] == []
    # b2a converts B_TEST's files (the folders keep their order), and the table says so
    back = styletx("evaluate", trained_run, scenes["test_a"], scenes["test_b"], "-d", "b2a",
                   "--json", "--device", "cpu")
    assert [Path(p["source"]).parent for p in json.loads(back.stdout)["pairs"]] == [
        scenes["test_b"]] * 3
    table = styletx("evaluate", trained_run, scenes["test_a"], scenes["test_b"], "-d", "b2a",
                    "--device", "cpu")
    assert table.stdout.splitlines()[0] == ("b2a: each file of B_TEST converted and compared "
                                            "with its pair in A_TEST")
    assert "are the folders in that order" not in result.stderr
    # the folders swapped, as a trial did: scored (and saved) without a word before
    swapped = styletx("evaluate", trained_run, scenes["test_b"], scenes["test_a"],
                      "--device", "cpu")
    assert swapped.exit_code == 0, swapped.stderr
    assert ("Warning: the conversion is worse than the untouched input on most pairs: for a2b, "
            "each file of A_TEST (the first folder) is converted and compared with its pair in "
            "B_TEST; are the folders in that order") in swapped.stderr
    assert "Warning: the conversion's mean psnr_db (" in swapped.stderr  # and by how much


def test_evaluate_b2a_and_aligned(styletx, p2p_run, pairs, tmp_path):
    # Side-by-side copies of the test pairs give the same scores as the two folders.
    for a in sorted(pairs["test_a"].glob("*.png")):
        both = np.concatenate([np.asarray(Image.open(a)),
                               np.asarray(Image.open(pairs["test_b"] / a.name))], axis=1)
        _save(tmp_path / "ab" / a.name, both)
    folders = evaluate(p2p_run, pairs["test_a"], pairs["test_b"], device="cpu")
    aligned = evaluate(p2p_run, tmp_path / "ab", aligned=True, device="cpu")
    for kind in ("converted", "baseline"):
        assert aligned.means()[kind] == pytest.approx(folders.means()[kind])
    table = styletx("evaluate", p2p_run, tmp_path / "ab", "--aligned")
    assert table.stdout.startswith("a2b: the A half of each file of A_TEST converted and "
                                   "compared with its B half\n")
    result = styletx("evaluate", p2p_run, pairs["test_a"], pairs["test_b"], "-d", "b2a")
    assert result.exit_code == 2 and "trained for a2b only" in result.error_lines[0]
    assert "found" not in result.stderr  # refused before the test files are paired
    converted = styletx("convert", p2p_run, pairs["test_a"], "-d", "b2a", "-o", tmp_path / "c")
    assert converted.exit_code == 2 and "trained for a2b only" in converted.error_lines[0]
    assert not (tmp_path / "c").exists()


def test_evaluate_bad_input(styletx, p2p_run, pairs, tmp_path):
    (tmp_path / "x").mkdir()
    _save(tmp_path / "x" / "other.png", _pixels(0))
    no_pairs = styletx("evaluate", p2p_run, pairs["test_a"], tmp_path / "x")
    assert no_pairs.exit_code == 2 and "no file of A_TEST" in no_pairs.stderr
    missing = styletx("evaluate", p2p_run, pairs["test_a"])
    assert missing.exit_code == 2 and "missing B_TEST" in missing.stderr
    # a corrupt target is reported by name, the other pairs are still scored, exit code 1
    import shutil

    b = shutil.copytree(pairs["test_b"], tmp_path / "b")
    (b / "held001.png").write_bytes(b"not an image")
    whole = styletx("evaluate", p2p_run, pairs["test_a"], pairs["test_b"])
    saved = (p2p_run / "evaluation-a2b.json").read_text()
    partly = styletx("evaluate", p2p_run, pairs["test_a"], b, "--json")
    assert whole.exit_code == 0 and partly.exit_code == 1
    report = json.loads(partly.stdout)
    assert len(report["pairs"]) == 3 and report["failed"][0]["file"].endswith("held001.png")
    assert "held001" in partly.stderr
    # ... and the run keeps the whole evaluation it had, not the partial one
    assert (p2p_run / "evaluation-a2b.json").read_text() == saved
    assert "not updated: some pairs could not be scored" in partly.stderr


def test_keep_dropout_makes_conversion_stochastic(p2p_run, pairs):
    import styletx

    image = np.asarray(Image.open(next(pairs["test_a"].glob("*.png"))))
    plain = styletx.load_run(p2p_run, device="cpu")
    assert np.array_equal(plain.convert_array(image), plain.convert_array(image))
    noisy = styletx.load_run(p2p_run, device="cpu", keep_dropout=True)
    assert not np.array_equal(noisy.convert_array(image), noisy.convert_array(image))


def test_keep_dropout_on_a_model_without_dropout(styletx, trained_run, scenes, tmp_path):
    result = styletx("convert", trained_run, scenes["test_a"], "-o", tmp_path / "out",
                     "--keep-dropout")
    assert result.exit_code == 2 and "has no dropout" in result.stderr


def test_a_run_that_cannot_start_writes_nothing(styletx, tmp_path):
    """Voice pairs shorter than one training segment: refused before the run folder exists."""
    import soundfile as sf

    from styletx.audio.synth import HIGH, LOW, utterance

    for i in range(4):
        for side, voice in (("a", LOW), ("b", HIGH)):
            (tmp_path / side).mkdir(exist_ok=True)
            sf.write(tmp_path / side / f"{i}.wav", utterance(voice, 0.3, seed=i), 22050)
    result = styletx("train", tmp_path / "a", tmp_path / "b", *P2P, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "only 0 pair(s) are as long as one training segment" in result.stderr
    assert "skipping the pair of" in result.stderr
    assert "decoder" not in result.stderr  # refused before the encoders' fit
    assert not (tmp_path / "run").exists()


def test_evaluate_small_images_and_same_folder(styletx, pairs, p2p_run, tmp_path):
    for i in range(2):
        _save(tmp_path / "a" / f"{i}.png", _pixels(i, 8, 8))
        _save(tmp_path / "b" / f"{i}.png", _pixels(i + 5, 8, 8))
    report = styletx("evaluate", p2p_run, tmp_path / "a", tmp_path / "b", "--json")
    assert report.exit_code == 0, report.stderr
    scores = json.loads(report.stdout)["pairs"]
    assert all(p["converted"]["ssim"] is None and p["converted"]["psnr_db"] > 0 for p in scores)
    same = styletx("evaluate", p2p_run, pairs["test_a"], pairs["test_a"])
    assert same.exit_code == 2 and "same folder" in same.stderr
    _save(tmp_path / "b" / "0.png", _pixels(5, 8, 12))  # the converted and the input: one line
    resized = styletx("evaluate", p2p_run, tmp_path / "a", tmp_path / "b")
    assert resized.stderr.count("0: the true image is 12x8, the input 8x8: resized") == 1
