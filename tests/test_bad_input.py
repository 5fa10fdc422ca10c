"""Each kind of bad input gets one specific one-line error, the right exit code, no traceback
and no partial output."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY
from PIL import Image


def train_args(a, b, out, *extra):
    return ("train", a, b, "--out", out, *TINY, "--steps", "2", "--size", "16", *extra)


def assert_usage_error(result, *fragments):
    assert result.exit_code == 2, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.error_lines[0]


def test_empty_folder(styletx, data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = styletx(*train_args(empty, data["b"], tmp_path / "run"))
    assert_usage_error(result, str(empty), "empty")
    assert not (tmp_path / "run").exists()


def test_folder_without_images(styletx, data, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "notes.txt").write_text("hello")
    result = styletx(*train_args(texts, data["b"], tmp_path / "run"))
    assert_usage_error(result, str(texts), "no image files")
    assert not (tmp_path / "run").exists()


def test_folders_of_different_kinds_of_file(styletx, data, tmp_path):
    """Photos in A and recordings in B: one error naming both folders' kinds, not a warning
    that the two domains tie followed by an error about B alone."""
    voices = tmp_path / "voices"
    voices.mkdir()
    sf.write(voices / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    result = styletx(*train_args(data["a"], voices, tmp_path / "run"))
    assert_usage_error(result, f"A_DIR {data['a']} holds image files and B_DIR {voices} audio "
                               "files: both folders must hold the same kind of file")
    assert "domains" not in result.stderr and not (tmp_path / "run").exists()


def test_an_encoder_setting_for_images_is_refused(styletx, data, tmp_path):
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", "--encoder-set",
                                 "n_mels=40"))
    assert_usage_error(result, "--encoder-set n_mels: no image encoder has such a setting")
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", "--encoder", "rgb",
                                 "--encoder-set", "n_mels=40"))
    assert_usage_error(result, "--encoder-set n_mels: the rgb encoder has no such setting (it "
                               "takes none)")
    assert not (tmp_path / "run").exists()


def test_an_output_folder_that_cannot_be_written_is_refused_before_reading(styletx, data,
                                                                          tmp_path, monkeypatch):
    """A read-only --out was found only at the first write, after every file had been read.
    (Root writes anywhere but on a read-only mount, so the refusal is injected where the
    probe file is written.)"""
    import errno

    write_bytes = Path.write_bytes

    def refused(path, data):
        if ".styletx-write-check" in path.name:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", refused)
    monkeypatch.setattr("styletx.engine.training.inputs.load_folder", None)  # not reached
    run = tmp_path / "run"
    result = styletx(*train_args(data["a"], data["b"], run))
    assert result.exit_code == 1 and result.error_lines == [
        f"Error: --out {run}: cannot write there (Read-only file system)"]


def test_an_encoder_setting_a_run_lacks_is_refused_on_resume(styletx, data, tmp_path):
    run = tmp_path / "run"
    assert styletx(*train_args(data["a"], data["b"], run)).exit_code == 0
    result = styletx(*train_args(data["a"], data["b"], run, "--steps", "3", "--encoder-set",
                                 "n_mels=40"))
    assert_usage_error(result, f"--encoder-set n_mels: the rgb encoder {run} was trained with "
                               "has no such setting; leave it out to resume")


def test_missing_folder(styletx, data, tmp_path):
    result = styletx(*train_args(tmp_path / "nope", data["b"], tmp_path / "run"))
    assert_usage_error(result, "nope", "no such folder")


def test_same_folder(styletx, data, tmp_path):
    result = styletx(*train_args(data["a"], data["a"], tmp_path / "run"))
    assert_usage_error(result, "same folder")


def test_unknown_model(styletx, data, tmp_path):
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", "--model", "nope"))
    assert_usage_error(result, "'nope'", "--model", "cyclegan")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value, said", [
    ("--steps", "0", "0"), ("--size", "-8", "-8"), ("--batch-size", "0", "0"),
    # a typo trained "forever"; a seed past 64 bits was a traceback
    ("--steps", "99999999999999999999", "at most 1,000,000,000 (got 99,999,999,999,"),
    ("--seed", "99999999999999999999", "at most 9,223,372,036,854,775,807")])
def test_bad_numbers(styletx, data, tmp_path, option, value, said):
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", option, value))
    assert_usage_error(result, option, said)
    assert not (tmp_path / "run").exists()


def test_size_not_a_multiple(styletx, data, tmp_path):
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", "--size", "18"))
    assert_usage_error(result, "--size 18", "multiple of 4")


def test_unknown_setting(styletx, data, tmp_path):
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", "--set", "ngff=3"))
    assert_usage_error(result, "'ngff'")


def test_run_inside_input_folder(styletx, data):
    result = styletx(*train_args(data["a"], data["b"], data["a"] / "run"))
    assert_usage_error(result, "inside the input folder")
    assert not (data["a"] / "run").exists()


def test_out_folder_that_is_not_a_run(styletx, data, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("precious")
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "busy"))
    assert_usage_error(result, "not a styletx run")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize("make_bad, problem", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("this is not a picture"), "not an image"),
    (lambda p: p.write_bytes(p.with_name("scene000.png").read_bytes()[:300]), "corrupt"),
])
def test_bad_training_file_is_reported_and_skipped(styletx, data, tmp_path, make_bad, problem):
    bad = data["a"] / "zzz.png"
    make_bad(bad)
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run"))
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "zzz.png" in line]
    assert len(warning) == 1 and problem in warning[0] and "skipping" in warning[0]


def test_training_files_enlarged_much_are_named_in_one_warning(styletx, data, tmp_path):
    """A 5x3 image went into training enlarged 6x without a word: the model learns its blur."""
    tiny = data["a"] / "zzz.png"
    Image.fromarray(np.zeros((3, 5, 3), np.uint8)).save(tiny)
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run"))
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "training enlarges" in line]
    files = len(list(data["a"].iterdir())) + len(list(data["b"].iterdir()))
    assert len(warning) == 1, result.stderr
    assert f"enlarges 1 of the {files} files more than 2x" in warning[0]
    assert f"{tiny}, 6x" in warning[0] and "--size" in warning[0]


def test_an_unknown_encoder_is_refused_before_the_files_are_read(styletx, data, tmp_path):
    (data["a"] / "zzz.png").write_bytes(b"")  # reading it would warn
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", "--encoder", "nosuch"))
    assert_usage_error(result, "unknown encoder 'nosuch' for --encoder")
    assert "zzz.png" not in result.stderr
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", "--encoder", "mel"))
    assert_usage_error(result, "--encoder mel encodes audio files, not image files")
    assert "zzz.png" not in result.stderr


def test_folder_of_only_bad_files(styletx, data, tmp_path):
    for f in data["a"].iterdir():
        f.write_bytes(b"")
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run"))
    assert_usage_error(result, str(data["a"]), "none of the")


def test_convert_reports_bad_file_and_converts_the_rest(styletx, trained_run, data, tmp_path):
    (data["test_a"] / "broken.png").write_bytes(b"")
    (data["test_a"] / "fake.jpg").write_text("not an image")
    out = tmp_path / "out"
    result = styletx("convert", trained_run, data["test_a"], "-o", out)
    assert result.exit_code == 1
    assert any("broken.png" in line and "empty file" in line for line in result.error_lines)
    assert any("fake.jpg" in line and "not an image" in line for line in result.error_lines)
    written = sorted(p.name for p in out.rglob("*"))
    assert written == sorted(p.name for p in data["test_a"].glob("held*.png"))  # no partials


def test_convert_output_inside_input_folder(styletx, trained_run, data):
    result = styletx("convert", trained_run, data["test_a"], "-o", data["test_a"] / "out")
    assert_usage_error(result, "inside the input folder")
    assert not (data["test_a"] / "out").exists()


def test_convert_missing_input(styletx, trained_run, tmp_path):
    result = styletx("convert", trained_run, tmp_path / "ghost.png", "-o", tmp_path / "out")
    assert_usage_error(result, "ghost.png", "no such file")


def test_not_a_run_folder(styletx, data, tmp_path):
    result = styletx("convert", data["b"], data["test_a"], "-o", tmp_path / "out")
    assert_usage_error(result, "not a styletx run folder")
    assert not (tmp_path / "out").exists()


def copy_run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy without the previous checkpoint (which convert would fall back on)."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    shutil.rmtree(run / ".previous", ignore_errors=True)
    return run


def test_missing_weights(styletx, trained_run, data, tmp_path):
    run = copy_run(trained_run, tmp_path)
    (run / "model.safetensors").unlink()
    result = styletx("convert", run, data["test_a"], "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert len(result.error_lines) == 1 and "model.safetensors" in result.error_lines[0]
    assert "missing" in result.error_lines[0]
    assert not (tmp_path / "out").exists()


def test_truncated_weights(styletx, trained_run, data, tmp_path):
    run = copy_run(trained_run, tmp_path)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = styletx("convert", run, data["test_a"], "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert len(result.error_lines) == 1 and "corrupt or truncated" in result.error_lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_direction(styletx, trained_run, data, tmp_path):
    result = styletx("convert", trained_run, data["test_a"], "-o", tmp_path / "out", "-d", "x2y")
    assert_usage_error(result, "--direction")


def test_a_folder_with_nothing_to_convert_is_named(styletx, trained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a picture")
    result = styletx("convert", trained_run, tmp_path / "empty", "-o", tmp_path / "out")
    assert_usage_error(result, f"no image files to convert in {tmp_path / 'empty'} (.png ")
    assert not (tmp_path / "out").exists()


def test_setting_of_the_wrong_type(styletx, data, tmp_path):
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", "--set", "ngf=wide"))
    assert_usage_error(result, "ngf", "expects int")


def test_convert_never_overwrites_its_input(styletx, trained_run, data):
    src = data["test_a"] / "held000.png"
    before = src.read_bytes()
    result = styletx("convert", trained_run, src, "-o", data["test_a"])
    assert_usage_error(result, "overwrite the input")
    assert src.read_bytes() == before


def test_a_file_named_twice_is_converted_once(styletx, trained_run, data, tmp_path):
    """It was refused ("X and X would both be written to ..."), by any path to it, and when
    also in a folder named beside it. Two different files for one output still are."""
    src = data["test_a"] / "held000.png"
    result = styletx("convert", trained_run, src, src.resolve(), data["test_a"], "-o",
                     tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in data["test_a"].iterdir())
    other = tmp_path / "other"
    other.mkdir()
    (other / "held000.png").write_bytes(src.read_bytes())
    clash = styletx("convert", trained_run, src, other / "held000.png", "-o", tmp_path / "o2")
    assert_usage_error(clash, "would both be written to")


def test_a_folder_where_an_output_goes_is_named_not_replaced(styletx, trained_run, data,
                                                           tmp_path):
    (tmp_path / "out" / "held000.png").mkdir(parents=True)
    result = styletx("convert", trained_run, data["test_a"] / "held000.png", "-o",
                     tmp_path / "out")
    assert result.exit_code == 1 and "replacing" not in result.stderr
    assert "cannot write" in result.stderr and "Is a directory" in result.stderr


def test_named_file_of_another_kind_is_reported(styletx, trained_run, data, tmp_path):
    notes = tmp_path / "notes.dat"
    notes.write_bytes((data["test_a"] / "held000.png").read_bytes())
    result = styletx("convert", trained_run, notes, data["test_a"] / "held001.png",
                     "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert any("notes.dat" in line and "not an image file (" in line for line in result.error_lines)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["held001.png"]
    alone = styletx("convert", trained_run, notes, "-o", tmp_path / "nothing")
    assert alone.exit_code == 1 and "not an image file (" in alone.stderr
    assert not (tmp_path / "nothing").exists()  # no empty folder left behind


@pytest.mark.parametrize("setting", ["lr=-1", "pool_size=-1"])
def test_invalid_setting_values(styletx, data, tmp_path, setting):
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", "--set", setting))
    assert_usage_error(result, "cyclegan:")


def test_size_too_small_for_the_network(styletx, data, tmp_path):
    result = styletx(*train_args(data["a"], data["b"], tmp_path / "run", "--size", "4"))
    assert_usage_error(result, "--size 4", "at least 8")


def test_run_folder_with_a_broken_config(styletx, trained_run, data, tmp_path):
    run = copy_run(trained_run, tmp_path)
    (run / "config.json").write_text("{}")
    result = styletx("convert", run, data["test_a"], "-o", tmp_path / "out")
    assert_usage_error(result, "not a styletx run folder", "lacks")


def test_steps_zero_on_an_existing_run(styletx, trained_run, scenes, tmp_path):
    run = copy_run(trained_run, tmp_path)
    result = styletx("train", scenes["a"], scenes["b"], "--out", run, "--steps", "0")
    assert_usage_error(result, "--steps must be at least 1")


def _huge_png(path: Path) -> None:
    """A valid PNG header that claims 30000 x 30000 pixels (twice Pillow's safety limit)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def _symlink_loop(path: Path) -> None:
    path.symlink_to(path.name)  # points to itself


BAD_FILES = {  # name -> (how to make it, what the one line says)
    "empty.png": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated.png": (lambda p: p.write_bytes(min(p.parent.glob("*.png")).read_bytes()[:300]),
                      "corrupt or truncated"),
    "text.png": (lambda p: p.write_text("not a picture"), "not an image"),
    "huge.png": (_huge_png, "image too large"),
    "loop.png": (_symlink_loop, "a symbolic link to nothing"),
    "folder.png": (lambda p: p.mkdir(), ""),
}


@pytest.mark.parametrize("command", ["train", "convert", "evaluate"])
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_matrix(styletx, trained_run, data, tmp_path, command, name):
    """Every kind of bad file, in the folder a command reads: named on one line with its
    problem, the good files used, no traceback, no partial output; train goes on (exit 0),
    convert and evaluate report it at the end (exit 1)."""
    make, problem = BAD_FILES[name]
    folder = data["a"] if command == "train" else data["test_a"]
    make(folder / name)
    if command == "evaluate":
        shutil.copy(min(data["test_b"].glob("*.png")), data["test_b"] / name)  # its pair
        result = styletx("evaluate", trained_run, folder, data["test_b"])
        lines = [line for line in result.stderr.splitlines() if name in line]
        assert "Traceback" not in result.stderr
        assert result.exit_code in (0, 1), result.stderr
        assert "mean" in result.stdout  # the good pairs were scored
        if name != "folder.png":  # (a broken link's B partner is named as left out, too)
            assert [line for line in lines if problem in line], result.stderr
        return
    if command == "train":
        result = styletx(*train_args(folder, data["b"], tmp_path / "run"))
        assert result.exit_code == 0, result.stderr
        lines = [line for line in result.stderr.splitlines() if name in line]
    else:
        out = tmp_path / "out"
        result = styletx("convert", trained_run, folder, "-o", out)
        lines = [line for line in result.stderr.splitlines() if name in line]
        if any(line.startswith("Error") for line in lines):  # a file it could not read
            assert result.exit_code == 1, result.stderr
        good = sorted(p.name for p in folder.glob("held*.png"))
        assert sorted(p.name for p in out.iterdir()) == good  # nothing partial, none missed
    assert "Traceback" not in result.stderr
    if name == "folder.png":  # a folder with a file's name: a folder, with nothing in it
        assert lines == []
        return
    assert len(lines) == 1 and problem in lines[0], result.stderr


def test_a_file_name_that_is_not_utf8_is_converted_or_named(styletx, trained_run, data,
                                                            tmp_path):
    import os

    source = data["test_a"] / "held000.png"
    odd = os.path.join(os.fsencode(data["test_a"]), b"caf\xe9.png")  # Latin-1, not UTF-8
    os.rename(source, odd)
    result = styletx("convert", trained_run, data["test_a"], "-o", tmp_path / "out")
    assert "Traceback" not in result.stderr
    assert result.exit_code == 0, result.stderr
    assert os.path.exists(os.path.join(os.fsencode(tmp_path / "out"), b"caf\xe9.png"))


def test_an_output_folder_that_cannot_be_written_stops_at_once(styletx, trained_run, data):
    """Not one error per input: one line, before any work. (/sys refuses new folders even to
    root, where permission bits do not.)"""
    import os

    target = Path("/sys/styletx-test-output")
    try:
        os.mkdir(target)
    except OSError:
        pass
    else:  # a machine where /sys takes folders: nothing to test here
        os.rmdir(target)
        pytest.skip("/sys accepts new folders here")
    result = styletx("convert", trained_run, data["test_a"], "-o", target)
    assert result.exit_code == 1
    assert len(result.error_lines) == 1, result.stderr
    assert result.error_lines[0].startswith(f"Error: -o {target}: cannot write there (")


def test_an_unreadable_input_is_skipped_and_the_rest_converted(styletx, trained_run, data,
                                                              tmp_path, monkeypatch):
    """(chmod 000 cannot stop root, so the refusal is injected where Pillow opens the file.)"""
    from PIL import Image

    locked = data["test_a"] / "held000.png"
    real_open = Image.open

    def refusing_open(path, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", refusing_open)
    result = styletx("convert", trained_run, data["test_a"], "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.error_lines == [f"Error: {locked}: cannot read file (permission denied)"]
    others = sorted(p.name for p in data["test_a"].glob("held*.png") if p != locked)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == others
