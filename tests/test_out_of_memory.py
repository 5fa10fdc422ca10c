"""Running out of memory is a one-line error that says what to change, never a traceback; in
conversion it costs only the input that does not fit (a batch that does not fit is retried one
input at a time). Real failed allocations: PyTorch's CPU allocator refusing 1 PiB."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from styletx.engine.convert import Run
from styletx.plugins.cyclegan import CycleGAN


def allocate_too_much():
    torch.empty(2**50, dtype=torch.uint8)  # raises: DefaultCPUAllocator: can't allocate memory


def write_images(folder, sizes):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.fixture
def run_out_of_memory(monkeypatch):
    """Make the network run out of memory for the inputs ``too_big(x)`` picks."""
    translate = Run._convert_whole

    def install(too_big):
        def convert_whole(self, x, direction):
            if too_big(x):
                allocate_too_much()
            return translate(self, x, direction)
        monkeypatch.setattr(Run, "_convert_whole", convert_whole)
    return install


def test_a_batch_that_does_not_fit_is_retried_one_input_at_a_time(
        styletx, trained_run, tmp_path, run_out_of_memory):
    write_images(tmp_path / "in", [(16, 16)] * 3)
    alone = styletx("convert", trained_run, tmp_path / "in", "-o", tmp_path / "alone",
                    "--batch-size", "1")
    assert alone.exit_code == 0, alone.stderr
    run_out_of_memory(lambda x: len(x) > 1)
    result = styletx("convert", trained_run, tmp_path / "in", "-o", tmp_path / "out",
                     "--batch-size", "4")
    assert result.exit_code == 0, result.stderr
    assert "converted 3 file(s)" in result.stdout
    for i in range(3):
        with Image.open(tmp_path / "out" / f"{i}.png") as a, \
                Image.open(tmp_path / "alone" / f"{i}.png") as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_an_input_that_does_not_fit_fails_alone(styletx, trained_run, tmp_path, run_out_of_memory):
    write_images(tmp_path / "in", [(16, 16), (64, 48), (16, 16)])
    run_out_of_memory(lambda x: x.shape[-1] >= 64)
    result = styletx("convert", trained_run, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.error_lines == [f"Error: {tmp_path / 'in' / '1.png'}: out of memory on cpu "
                                  "translating it at 64x48 (an allocation of 1048576.00 GiB "
                                  "failed)"]
    assert "converted 2 file(s)" in result.stdout and "1 failed" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "2.png"]


def out_of_memory_in_training_step(monkeypatch, failing: int) -> None:
    """CycleGAN's training step ``failing`` (0-based) runs out of memory."""
    step = CycleGAN.training_step

    def training_step(self, batch, index):
        if index == failing:
            allocate_too_much()
        return step(self, batch, index)
    monkeypatch.setattr(CycleGAN, "training_step", training_step)


def test_training_files_that_would_fill_the_memory_stop_the_reading(styletx, data, tmp_path,
                                                                  monkeypatch):
    """A mistyped --size 5000 enlarged 27 small photos until the kernel killed the process
    (22.7 GB, exit 137, no word of why). Here each prepared file counts 1 GB with 10 GB free:
    by the third the projection passes half of it, and the reading stops naming --size."""
    from styletx.engine import memory

    monkeypatch.setattr(memory, "sample_bytes", lambda item: 10**9)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 * 10**9)
    files = len(list(data["a"].iterdir()))
    result = styletx("train", data["a"], data["b"], "--out", tmp_path / "run", *TINY,
                     "--size", "32")  # with the default reading threads
    assert result.exit_code == 2
    assert result.error_lines == [
        f"Error: the training files at --size 32 would take about {files * 1.5:.1f} GB of "
        f"memory (3 of the {files} files of A_DIR read: 3.0 GB), more than half of the 10.0 "
        "GB free, and training at that size needs the rest; use a smaller --size (or fewer "
        "files)"]
    assert not (tmp_path / "run").exists()


def test_what_a_prepared_sample_holds_is_what_is_counted(monkeypatch):
    """The samples' own arrays, not the process's memory (which also holds the full-size photos
    other threads are decoding: a folder of 12-megapixel photos was refused as 55 GB); and a
    long first recording does not stand for all the files."""
    from styletx.audio.sample import AudioSample
    from styletx.engine import memory
    from styletx.image.sample import ImageSample

    image = ImageSample(np.zeros((10, 20, 3), np.float32))
    voice = AudioSample(np.zeros(1000, np.float32), 16000)
    assert memory.sample_bytes(image) == 10 * 20 * 3 * 4
    assert memory.sample_bytes((image, voice)) == 2400 + 4000  # a pair
    assert memory.sample_bytes(torch.zeros(5, dtype=torch.float16)) == 10
    assert memory.sample_bytes("a plugin's sample of another kind") == 0
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 * 10**9)
    watch = memory.MemoryWatch(256)
    watch.new_folder()
    long_first = AudioSample(np.zeros(10**9 // 4, np.float32), 16000)  # 1 GB
    watch.check(long_first, 1, 100, "A_DIR")  # 1 GB x 100 would not fit; one file says little
    for read in range(2, 101):
        watch.check(voice, read, 100, "A_DIR")  # ~1 GB in all: fits


def test_training_out_of_memory_says_what_to_lower(styletx, data, tmp_path, monkeypatch):
    out_of_memory_in_training_step(monkeypatch, 1)
    result = styletx("train", data["a"], data["b"], "--out", tmp_path / "run", *TINY,
                     "--steps", "3", "--size", "16", "--batch-size", "2")
    assert result.exit_code == 1
    assert result.error_lines == ["Error: out of memory on cpu in step 2 (an allocation of "
                                  "1048576.00 GiB failed); lower --batch-size (now 2) or --size "
                                  "(now 16); a rerun resumes from step 1"]  # a short run
    #                                                  saves from its first steps on


def test_training_out_of_memory_saves_the_steps_since_the_checkpoint(styletx, data, tmp_path,
                                                                     monkeypatch):
    out_of_memory_in_training_step(monkeypatch, 4)
    result = styletx("train", data["a"], data["b"], "--out", tmp_path / "run", *TINY,
                     "--steps", "8", "--save-every", "100", "--size", "16")
    assert result.exit_code == 1
    assert result.error_lines[0].endswith("a rerun resumes from step 4"), result.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["step"] == 4


def test_out_of_memory_after_training_keeps_the_steps(styletx, data, tmp_path, monkeypatch):
    """The vaegan scores its training examples once trained (latent.json): running out of
    memory there was a generic error that did not say the steps were saved."""
    run = tmp_path / "run"
    command = ("train", data["a"], data["b"], "--model", "vaegan", "--out", run, *TINY,
               "--steps", "2", "--size", "16")
    with monkeypatch.context() as patch:
        patch.setattr("styletx.tools.latent.save_training_statistics",
                      lambda *args, **kwargs: allocate_too_much())
        result = styletx(*command)
    assert result.exit_code == 1
    assert result.error_lines == [
        "Error: out of memory after training, while the vaegan model wrote its extra outputs "
        f"(an allocation of 1048576.00 GiB failed); {run} is trained to step 2 and the same "
        "command writes them"]
    assert not (run / "latent.json").exists()
    again = styletx(*command)
    assert again.exit_code == 0, again.stderr
    assert (run / "latent.json").is_file()


def test_a_gpu_running_out_elsewhere_suggests_the_cpu(styletx, trained_run, tmp_path,
                                                      monkeypatch):
    def load_run(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 "
                                          "has a total capacity of 7.79 GiB of which 1.20 GiB is "
                                          "free.")
    monkeypatch.setattr("styletx.engine.convert.load_run", load_run)
    write_images(tmp_path / "in", [(16, 16)])
    result = styletx("convert", trained_run, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.error_lines == ["Error: out of memory (an allocation of 2.00 GiB failed); "
                                  "the CPU may have more: --device cpu"]
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc")
def test_past_the_free_memory_an_allocation_fails_instead_of_the_process(monkeypatch):
    """With 64 MiB said to be free, 1 GiB cannot be had while training on the CPU, from
    PyTorch or NumPy, and can again afterwards (the kernel killed a process that grew past the
    machine, without a word: exit 137). Overlapping trainings share the limit, the last puts
    it back; STYLETX_MEMORY_LIMIT=0 and a GPU set none."""
    import resource

    from styletx.engine import memory

    before = resource.getrlimit(resource.RLIMIT_DATA)
    monkeypatch.setattr(memory, "available_bytes", lambda swap=False: 64 * 2**20)
    with memory.allocations_fail_past_free_memory("cpu"):
        with memory.allocations_fail_past_free_memory("cpu"):  # another thread's training
            limit = resource.getrlimit(resource.RLIMIT_DATA)
        assert resource.getrlimit(resource.RLIMIT_DATA) == limit != before
        with pytest.raises(RuntimeError, match="can't allocate memory"):
            torch.empty(2**30, dtype=torch.uint8)
        with pytest.raises(MemoryError):
            np.ones(2**30, np.uint8)
        torch.ones(16 * 2**20, dtype=torch.uint8)  # what is free stays usable
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    assert torch.ones(2**30, dtype=torch.uint8).sum() == 2**30
    with memory.allocations_fail_past_free_memory("cuda"):  # a GPU's driver: not limited
        assert resource.getrlimit(resource.RLIMIT_DATA) == before
    monkeypatch.setenv("STYLETX_MEMORY_LIMIT", "0")
    with memory.allocations_fail_past_free_memory("cpu"):
        assert resource.getrlimit(resource.RLIMIT_DATA) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc")
def test_a_batch_past_the_free_memory_is_one_line_not_a_killed_process(styletx, data,
                                                                        tmp_path, monkeypatch):
    """A trial's --batch-size 100000 grew to 22 GB and was killed by the kernel (exit 137)."""
    from styletx.engine import memory

    monkeypatch.setattr(memory, "available_bytes", lambda swap=False: 150 * 2**20)
    result = styletx("train", data["a"], data["b"], "--out", tmp_path / "run", *TINY,
                     "--steps", "3", "--size", "32", "--batch-size", "8192")
    assert result.exit_code == 1
    assert result.error_lines[0].startswith("Error: out of memory on cpu in step 1 (an "
                                            "allocation of "), result.stderr
    assert result.error_lines[0].endswith("failed); lower --batch-size (now 8192) or --size "
                                          "(now 32); no checkpoint was saved")
    assert not (tmp_path / "run").exists()
