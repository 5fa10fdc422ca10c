"""A file that cannot be written (full disk, a file where a folder should be) is a one-line
error naming it, never a traceback or a partial file; a full disk stops training with the
previous checkpoint whole, and stops conversion instead of failing every file after."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess

import pytest
from conftest import TINY
from PIL import Image
from safetensors import SafetensorError

from styletx.contract import files
from styletx.contract.errors import WriteError
from styletx.engine import runs
from styletx.plugins.image import ImageDomain

DISK_FULL = SafetensorError("Error while serializing: I/O error: No space left on device "
                            "(os error 28)")


def leftovers(folder):
    return [p.name for p in folder.rglob(".*tmp-*")]


@pytest.mark.parametrize("raised, reason, full", [
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full", True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is used up", True),
    (DISK_FULL, "the disk is full", True),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied", False),
    (OSError("cannot write mode RGBA as JPEG"), "cannot write mode RGBA as JPEG", False),
])
def test_atomic_path_names_the_file_and_the_reason(tmp_path, raised, reason, full):
    with pytest.raises(WriteError) as caught:
        with runs.atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise raised
    assert str(caught.value) == f"cannot write {tmp_path / 'x.bin'}: {reason}"
    assert caught.value.disk_full == full
    assert list(tmp_path.iterdir()) == []


def test_other_errors_are_a_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch):
    unexpected_pos = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5")
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: not ours
        with runs.atomic_path(tmp_path / "y.pt"):
            raise unexpected_pos
    monkeypatch.setattr(files, "FULL_DISK_BYTES", 2**62)  # as if the disk had filled up
    with pytest.raises(WriteError, match="the disk is full"):
        with runs.atomic_path(tmp_path / "new" / "z.pt"):
            raise unexpected_pos
    with pytest.raises(RuntimeError, match="out of memory"):  # never taken for a write problem
        with runs.atomic_path(tmp_path / "z.pt"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert leftovers(tmp_path) == []


def test_a_file_where_the_output_folder_should_be(styletx, trained_run, data, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    result = styletx("convert", trained_run, data["a"], "-o", blocker / "out")
    assert result.exit_code == 2
    assert result.error_lines == [f"Error: -o {blocker / 'out'}: {blocker} is a file, not a folder"]
    trained = styletx("train", data["a"], data["b"], "--out", blocker / "run", *TINY)
    assert trained.exit_code == 2
    assert trained.error_lines == [
        f"Error: --out {blocker / 'run'}: {blocker} is a file, not a folder"]
    exported = styletx("export", trained_run, "--format", "torchscript", "-o", blocker / "g.pt")
    assert exported.exit_code == 1
    assert exported.error_lines == [
        f"Error: cannot write {blocker / 'g.pt'}: {blocker} is a file, not a folder"]


def test_a_full_disk_stops_training_and_the_last_checkpoint_resumes(styletx, data, tmp_path,
                                                                     monkeypatch):
    run = tmp_path / "run"
    write_weights = runs._write_weights

    def fill_up_at_step_2(path, tensors, metadata):
        if metadata["step"] == "2":
            path.write_bytes(b"\0" * 100)  # what got written before the disk filled
            raise DISK_FULL
        write_weights(path, tensors, metadata)
    monkeypatch.setattr(runs, "_write_weights", fill_up_at_step_2)
    args = ("train", data["a"], data["b"], "--out", run, *TINY, "--size", "16", "--steps", "3",
            "--save-every", "1")
    result = styletx(*args)
    assert result.exit_code == 1
    assert result.error_lines == [f"Error: cannot write {run / 'model.safetensors'}: the disk is "
                                  "full; training stopped at step 2; a rerun resumes from step 1"]
    assert leftovers(run) == []
    assert json.loads((run / "config.json").read_text())["step"] == 1
    monkeypatch.undo()  # space freed
    resumed = styletx(*args)
    assert resumed.exit_code == 0, resumed.stderr
    assert "from step 1" in resumed.stderr
    assert json.loads((run / "config.json").read_text())["step"] == 3


def test_a_full_disk_stops_conversion(styletx, trained_run, data, tmp_path, monkeypatch):
    save = ImageDomain.save
    written = []

    def fill_up_after_one(self, sample, path):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        save(self, sample, path)
        written.append(path)
    monkeypatch.setattr(ImageDomain, "save", fill_up_after_one)
    out = tmp_path / "out"
    result = styletx("convert", trained_run, data["a"], "-o", out, "--batch-size", "1")
    assert result.exit_code == 1
    assert len(result.error_lines) == 1
    assert result.error_lines[0].startswith(f"Error: cannot write {out}")
    assert result.error_lines[0].endswith(": the disk is full")
    assert len(list(out.iterdir())) == 1 and leftovers(out) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 512 KiB file system (tmpfs); skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
        capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield disk
    # lazy: a failed torch.save holds its (deleted) file open until it is garbage-collected
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_really_full_disks(styletx, trained_run, data, small_disk):
    """What torch, safetensors, Pillow and the file system really raise when space runs out."""
    room = 8 * 1024  # two small images (a tmpfs file takes at least a 4 KiB page)
    (small_disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - room))
    converted = styletx("convert", trained_run, data["a"], "-o", small_disk / "out")
    exported = styletx("export", trained_run, "--format", "torchscript", "-o", small_disk / "g.pt")
    for result in (converted, exported):
        assert result.exit_code == 1, result.stderr
        assert len(result.error_lines) == 1 and result.error_lines[0].endswith("the disk is full")
    written = list((small_disk / "out").iterdir())
    assert written  # the outputs before the disk filled up, each whole:
    for path in written:
        with Image.open(path) as image:
            image.load()
    (small_disk / "filler").unlink()
    trained = styletx("train", data["a"], data["b"], "--out", small_disk / "run", *TINY,
                      "--size", "16", "--steps", "2")  # its checkpoint takes ~1.5 MB
    assert trained.exit_code == 1
    assert len(trained.error_lines) == 1 and "the disk is full" in trained.error_lines[0]
    assert leftovers(small_disk) == []
