"""A file that cannot be written (full disk, a file where a folder should be) is a one-line
error naming it, never a traceback or a partial file; a full disk stops training with the
previous checkpoint whole, and stops conversion instead of failing every file after."""

from __future__ import annotations

import json

import pytest
from conftest import TINY
from safetensors import SafetensorError

from styletx import runs
from styletx.errors import WriteError
from styletx.plugins.image import ImageDomain


def leftovers(folder):
    return [p.name for p in folder.rglob(".*tmp-*")]


def test_atomic_path_names_the_file_and_the_reason(tmp_path, monkeypatch):
    with pytest.raises(WriteError, match="cannot write .*x.bin: Permission denied"):
        with runs.atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise PermissionError(13, "Permission denied", str(tmp))
    with pytest.raises(RuntimeError, match="a bug"):  # not a write problem: left alone
        with runs.atomic_path(tmp_path / "y.bin") as tmp:
            raise RuntimeError("a bug")
    monkeypatch.setattr(runs, "FULL_DISK_BYTES", 2**62)  # as if the disk had filled up
    with pytest.raises(WriteError, match="the disk is full") as caught:
        with runs.atomic_path(tmp_path / "z.pt") as tmp:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576")
    assert caught.value.disk_full
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_the_output_folder_should_be(styletx, trained_run, data, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    result = styletx("convert", trained_run, data["a"], "-o", blocker / "out")
    assert result.exit_code == 2
    assert result.error_lines == [f"Error: -o {blocker / 'out'}: {blocker} is a file, not a folder"]
    exported = styletx("export", trained_run, "--format", "torchscript", "-o", blocker / "g.pt")
    assert exported.exit_code == 1
    assert exported.error_lines == [
        f"Error: cannot write {blocker / 'g.pt'}: {blocker} is a file, not a folder"]


def test_a_full_disk_stops_training_and_the_last_checkpoint_resumes(styletx, data, tmp_path,
                                                                     monkeypatch):
    run = tmp_path / "run"
    save_file = runs.save_file

    def fill_up_at_step_2(tensors, path, metadata):
        if metadata["step"] == "2":
            path.write_bytes(b"\0" * 100)  # what got written before the disk filled
            monkeypatch.setattr(runs, "FULL_DISK_BYTES", 2**62)
            raise SafetensorError("Error while serializing: I/O error: No space left on device")
        save_file(tensors, path, metadata=metadata)
    monkeypatch.setattr(runs, "save_file", fill_up_at_step_2)
    args = ("train", data["a"], data["b"], "--out", run, *TINY, "--size", "16", "--steps", "3",
            "--save-every", "1")
    result = styletx(*args)
    assert result.exit_code == 1
    assert result.error_lines == [f"Error: cannot write {run / 'model.safetensors'}: "
                                  "the disk is full; training stopped at step 2"]
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
            monkeypatch.setattr(runs, "FULL_DISK_BYTES", 2**62)
            raise OSError(28, "No space left on device")
        save(self, sample, path)
        written.append(path)
    monkeypatch.setattr(ImageDomain, "save", fill_up_after_one)
    out = tmp_path / "out"
    result = styletx("convert", trained_run, data["a"], "-o", out, "--batch-size", "1")
    assert result.exit_code == 1
    assert len(result.error_lines) == 1
    assert result.error_lines[0].startswith(f"Error: cannot write {out}")
    assert result.error_lines[0].endswith(": the disk is full")
    assert len([p for p in out.iterdir()]) == 1 and leftovers(out) == []
