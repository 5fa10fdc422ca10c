"""Conversion: any size, every file, names mirrored, formats and alpha kept, Python API."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from PIL import Image

from styletx.contract.errors import UsageError
from styletx.engine.convert import load_run


def write(path, mode, size, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    Image.fromarray(pixels, mode).save(path)
    return path


def test_every_image_at_full_size_with_mirrored_names(styletx, trained_run, tmp_path):
    inputs = tmp_path / "in"
    write(inputs / "odd.png", "RGB", (37, 53))
    write(inputs / "nested" / "deep" / "wide.jpg", "RGB", (130, 21))
    write(inputs / "tiny.webp", "RGB", (3, 2))
    for i in range(60):  # more than the reference's 50-image limit
        write(inputs / "many" / f"{i:02d}.png", "RGB", (8, 8))
    single = write(tmp_path / "loose.bmp", "RGB", (17, 9))
    out = tmp_path / "out"
    result = styletx("convert", trained_run, inputs, single, "-o", out, "--batch-size", "4")
    assert result.exit_code == 0, result.stderr
    assert "converted 64 file(s)" in result.stdout
    for src, dst in [(inputs / "odd.png", out / "odd.png"),
                     (inputs / "nested/deep/wide.jpg", out / "nested/deep/wide.jpg"),
                     (inputs / "tiny.webp", out / "tiny.webp"), (single, out / "loose.bmp")]:
        with Image.open(src) as a, Image.open(dst) as b:
            assert (a.size, a.format) == (b.size, b.format)
    assert len(list((out / "many").glob("*.png"))) == 60


def test_alpha_and_grayscale_are_kept(styletx, trained_run, tmp_path):
    rgba = write(tmp_path / "in" / "logo.png", "RGBA", (20, 12))
    gray = write(tmp_path / "in" / "gray.png", "L", (12, 20))
    result = styletx("convert", trained_run, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "out" / "logo.png") as img, Image.open(rgba) as src:
        assert img.mode == "RGBA"
        assert np.array_equal(np.asarray(img)[..., 3], np.asarray(src)[..., 3])
    with Image.open(tmp_path / "out" / "gray.png") as img:
        assert img.size == (12, 20)
        assert img.mode == "RGB"  # the model's B side is colour; gray input is read as RGB
    del gray


def test_a_format_without_alpha_says_the_transparency_is_dropped(styletx, trained_run,
                                                                 tmp_path, monkeypatch):
    from styletx.plugins import image

    monkeypatch.setattr(image, "_WARNED", set())
    write(tmp_path / "in" / "logo.png", "RGBA", (20, 12))
    write(tmp_path / "in" / "logo2.png", "RGBA", (20, 12))
    result = styletx("convert", trained_run, tmp_path / "in", "-o", tmp_path / "out",
                     "--format", "jpg")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("JPEG files hold no transparency: the alpha channel") == 1
    with Image.open(tmp_path / "out" / "logo.jpg") as img:
        assert img.mode == "RGB"


def test_both_directions(styletx, trained_run, scenes, tmp_path):
    for direction in ("a2b", "b2a"):
        out = tmp_path / direction
        result = styletx("convert", trained_run, scenes["test_a"], "-o", out, "-d", direction)
        assert result.exit_code == 0, result.stderr
        assert len(list(out.glob("*.png"))) == 3


def test_python_api_converts_arrays_and_files(trained_run, scenes, tmp_path):
    run = load_run(trained_run, device="cpu")  # loaded once, used many times
    pixels = np.random.default_rng(1).random((29, 31, 3), dtype=np.float32)
    out = run.convert_array(pixels)
    assert out.shape == (29, 31, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    back = run.convert_array((pixels * 255).astype(np.uint8), direction="b2a")
    assert back.shape == (29, 31, 3)
    report = run.convert_files([scenes["test_a"]], tmp_path / "out", batch_size=2)
    assert len(report.converted) == 3 and not report.failed
    # the same file converted alone and in a batch gives the same result
    one = load_run(trained_run, device="cpu").convert_files(
        [scenes["test_a"] / "held000.png"], tmp_path / "single")
    assert one.converted
    a = np.asarray(Image.open(tmp_path / "out" / "held000.png"), np.int16)
    b = np.asarray(Image.open(tmp_path / "single" / "held000.png"), np.int16)
    assert np.abs(a - b).max() <= 1


def test_python_api_errors(trained_run, tmp_path):
    run = load_run(trained_run, device="cpu")
    with pytest.raises(UsageError, match="direction"):
        run.convert_array(np.zeros((8, 8, 3), np.float32), direction="sideways")
    with pytest.raises(UsageError, match="array"):
        run.convert_array(np.zeros((8, 8, 3), np.float32) + 7)
    with pytest.raises(UsageError, match="^convert_sample takes a sample of the image domain "
                                         r"\(what its load gives\), not a numpy.ndarray; "
                                         "convert_array converts arrays$"):
        run.convert_sample(np.zeros((8, 8, 3), np.float32))


def test_a_file_that_fails_is_a_warning_for_a_python_caller(trained_run, scenes, tmp_path,
                                                             caplog, monkeypatch):
    """Without an ``on_file`` callback (the CLI's), a failed file was only in report.failed:
    a Python user with logging on saw nothing, where training names the files it skips."""
    import logging
    import shutil

    from styletx.engine.evaluate import evaluate

    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    held = shutil.copytree(scenes["test_a"], tmp_path / "held")
    broken = held / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    run = load_run(trained_run, device="cpu")
    with caplog.at_level(logging.WARNING, logger="styletx"):
        report = run.convert_files(held, tmp_path / "out")
    assert [path for path, _ in report.failed] == [broken]
    assert [r.getMessage() for r in caplog.records] == [f"{broken}: {report.failed[0][1]}"]
    caplog.clear()
    truths = shutil.copytree(scenes["test_b"], tmp_path / "truths")
    (truths / "broken.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="styletx"):
        result = evaluate(run, held, truths)
    assert len(result.failed) == 1
    assert f"{broken}: not an image file (unrecognised format)" in [
        r.getMessage() for r in caplog.records]


def test_loading_a_run_keeps_the_callers_random_state(trained_run):
    """The networks are built with random weights before the saved ones replace them; that
    drew from torch's global generator, so a seeded notebook's next draws changed."""
    import torch

    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    run = load_run(trained_run, device="cpu")
    assert torch.equal(torch.rand(3), expected)
    assert repr(run) == (f"<Run {str(trained_run)!r}: cyclegan (tiny), image, step {run.step}, "
                         "on cpu>")


def test_python_api_takes_what_a_python_user_passes(trained_run, scenes, tmp_path):
    """From a new-user trial of the API: one path for the inputs (a str was read character by
    character, a Path not at all), a torch.device, a tensor that requires grad; an empty
    array is a UsageError, not a ZeroDivisionError."""
    import torch

    from styletx.audio.sample import AudioSample

    run = load_run(trained_run, device=torch.device("cpu"))
    held = scenes["test_a"]
    assert len(run.convert_files(str(held), tmp_path / "str").converted) == 3
    assert len(run.convert_files(held / "held000.png", tmp_path / "path").converted) == 1
    pixels = torch.rand(12, 14, 3, requires_grad=True)
    assert run.convert_array(pixels).shape == (12, 14, 3)
    for empty in (np.zeros((0, 5, 3), np.uint8), np.zeros((5, 0), np.uint8)):
        with pytest.raises(UsageError, match="the image is empty"):
            run.convert_array(empty)
    with pytest.raises(ValueError, match="wave must be floating-point samples in \\[-1, 1\\], "
                                         "not int16"):
        AudioSample(np.zeros(100, np.int16), 16000)


def test_output_format_can_be_chosen(styletx, trained_run, tmp_path):
    write(tmp_path / "in" / "photo.jpg", "RGB", (24, 16))
    result = styletx("convert", trained_run, tmp_path / "in", "-o", tmp_path / "out",
                     "--format", "png")
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "out" / "photo.png") as img:
        assert img.format == "PNG" and img.size == (24, 16)
    bad = styletx("convert", trained_run, tmp_path / "in", "-o", tmp_path / "o2", "--format", "gif")
    assert bad.exit_code == 2 and "--format gif: not an image format" in bad.error_lines[0]


def test_a_second_run_into_the_same_folder_says_what_it_replaces(styletx, trained_run, tmp_path):
    for name in ("one.png", "two.png"):
        write(tmp_path / "in" / name, "RGB", (12, 12))
    first = styletx("convert", trained_run, tmp_path / "in", "-o", tmp_path / "out")
    assert first.exit_code == 0 and "replacing" not in first.stderr
    again = styletx("convert", trained_run, tmp_path / "in", "-o", tmp_path / "out")
    assert again.exit_code == 0, again.stderr
    assert "replacing 2 existing file(s)" in again.stderr


def test_convert_without_a_terminal_prints_progress_lines(styletx, trained_run, data, tmp_path,
                                                           monkeypatch):
    """No progress bar when stderr is not a terminal: a plain line now and then (here: after
    every file) with the count, the speed and the time left."""
    monkeypatch.setattr("styletx.engine.progress.LINE_SECONDS", 0.0)
    count = len(list(data["test_a"].glob("*.png")))
    result = styletx("convert", trained_run, data["test_a"], "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("converted ")]
    assert lines[0].startswith(f"converted 1/{count} file(s) (") and "s left)" in lines[0]
    assert len(lines) == count - 1  # the last file: the summary line says it


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def _sigterm() -> None:  # what kill, timeout and docker stop send
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("interrupt, status", [(_ctrl_c, 130), (_sigterm, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_an_interrupted_conversion_says_how_far_it_got(styletx, trained_run, scenes, tmp_path,
                                                      monkeypatch, interrupt, status):
    """Ctrl-C or SIGTERM at the third file: the two written are complete, and the line says so.
    SIGTERM stopped the command at once, with no word and a temporary file left behind; now
    it stops as Ctrl-C does (exit 143), and SIGTERM's handling is put back after the
    command."""
    from styletx.engine.convert import Run

    write_file = Run._write

    def interrupted_at_the_third(self, converted, dst):
        if len(list(dst.parent.glob("*.png"))) == 2:
            interrupt()
        return write_file(self, converted, dst)

    monkeypatch.setattr(Run, "_write", interrupted_at_the_third)
    result = styletx("convert", trained_run, scenes["test_a"], "-o", tmp_path / "out",
                     "--batch-size", "1")
    assert result.exit_code == status
    assert result.error_lines == [f"Error: interrupted after 2 of 3 file(s); those written into "
                                  f"{tmp_path / 'out'} are complete, and the same command with "
                                  f"--skip-existing converts the rest"]
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in scenes["test_a"].iterdir())[:2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.undo()


def test_skip_existing_continues_an_interrupted_conversion(styletx, trained_run, scenes,
                                                          tmp_path, monkeypatch):
    """After an interrupt the same command redid everything (a scale trial: 1,284 of 4,000
    files rewritten, 59 s); --skip-existing converts only what is missing."""
    from styletx.engine.convert import Run

    out = tmp_path / "out"
    first = styletx("convert", trained_run, scenes["test_a"], "-o", out, "--batch-size", "1")
    assert first.exit_code == 0, first.stderr
    kept = sorted(out.iterdir())[0]
    kept.write_bytes(b"left alone")  # not a conversion: only skipping leaves it so
    sorted(out.iterdir())[1].unlink()
    written = []
    write_file = Run._write

    def recorded(self, converted, dst):
        written.append(dst.name)
        return write_file(self, converted, dst)

    monkeypatch.setattr(Run, "_write", recorded)
    again = styletx("convert", trained_run, scenes["test_a"], "-o", out, "--skip-existing")
    assert again.exit_code == 0, again.stderr
    assert "replacing" not in again.stderr and kept.read_bytes() == b"left alone"
    assert written == [sorted(p.name for p in scenes["test_a"].iterdir())[1]]
    assert again.stdout.strip() == (f"converted 1 file(s) into {out}; left 2 whose output "
                                    f"was there")


def test_an_interrupted_conversion_hands_a_python_caller_what_it_did(trained_run, scenes,
                                                                     tmp_path, monkeypatch):
    """A bare KeyboardInterrupt lost the report of the files already written."""
    from styletx.engine.convert import ConversionInterrupted, Run

    write_file = Run._write

    def interrupted_at_the_third(self, converted, dst):
        if len(list(dst.parent.glob("*.png"))) == 2:
            raise KeyboardInterrupt
        return write_file(self, converted, dst)

    monkeypatch.setattr(Run, "_write", interrupted_at_the_third)
    run = load_run(trained_run, device="cpu")
    with pytest.raises(ConversionInterrupted) as stopped:
        run.convert_files(scenes["test_a"], tmp_path / "out", batch_size=1)
    assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.status == 130
    assert [dst for _, dst in stopped.value.partial.converted] == sorted(
        (tmp_path / "out").iterdir())
    assert len(stopped.value.partial.converted) == 2
    assert str(stopped.value) == "interrupted after 2 file(s) written"


def test_quiet_after_the_command_as_before_it(styletx, scenes, tmp_path):
    """`styletx convert ... -q` was "No such option: -q"; only `styletx -q convert` worked."""
    train = ("train", scenes["a"], scenes["b"], "--preset", "tiny", "--steps", "1",
             "--device", "cpu", "--size", "16")
    for where, args in (("before", ("-q", *train)), ("after", (*train, "-q"))):
        result = styletx(*args, "--out", tmp_path / where)
        assert result.exit_code == 0, result.stderr  # only the 12 scenes' warning is said:
        assert [line[:23] for line in result.stderr.splitlines()] == ["Warning: A_DIR holds 12"]
    loud = styletx(*train, "--out", tmp_path / "loud")
    assert "A: " in loud.stderr  # the next command without -q logs again
