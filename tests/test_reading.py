"""Reading training files: each file is prepared at the training scale as soon as it is loaded,
reader threads give the same samples in the same order as one thread, and an unusable file is
named and skipped wherever it was read."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styletx.engine.data import Reader, load_folder
from styletx.engine.pairs import load_aligned
from styletx.plugins.image import ImageDomain

SIZE = 32  # prepared: the shorter side becomes round(32 * 286 / 256) = 36


def _photos(folder: Path, count: int, corrupt: int | None = None) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"photo{i:02d}.png"
        h, w = 60 + 7 * i, 90 + 3 * i
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    if corrupt is not None:
        paths[corrupt].write_bytes(paths[corrupt].read_bytes()[:200])
    return paths


@pytest.mark.parametrize("workers", [0, 2])
def test_files_are_read_in_order_prepared_and_bad_ones_skipped(tmp_path, workers):
    paths = _photos(tmp_path / "a", 12, corrupt=5)
    data = load_folder(tmp_path / "a", Reader(ImageDomain(), SIZE, workers), "A_DIR")
    assert data.files == paths[:5] + paths[6:]
    assert [p for p, _ in data.skipped] == [paths[5]]
    assert "corrupt" in data.skipped[0][1]
    for path, sample in zip(data.files, data.samples):
        assert min(sample.pixels.shape[:2]) == 36
        with Image.open(path) as img:
            w, h = img.size
        scale = 36 / min(h, w)
        assert sample.pixels.shape[:2] == (round(h * scale), round(w * scale))


def test_reader_threads_give_the_samples_one_thread_gives(tmp_path):
    _photos(tmp_path / "a", 10)
    here, workers = (load_folder(tmp_path / "a", Reader(ImageDomain(), SIZE, n), "A_DIR")
                     for n in (0, 2))
    assert here.files == workers.files
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(here.samples, workers.samples))


class _Recording(ImageDomain):
    """Notes which thread loaded each file, and the order of loads and preparations; with a
    barrier, each load waits until ``barrier.parties`` threads are loading at once."""

    events: list[str] = []
    barrier: threading.Barrier | None = None

    def load(self, path):
        self.events.append("load")
        if self.barrier is not None:
            self.barrier.wait()
        sample = super().load(path)
        sample.mode = f"{sample.mode}:{threading.current_thread().name}"
        return sample

    def prepare_for_training(self, sample, size):
        self.events.append("prepare")
        return super().prepare_for_training(sample, size)


def test_each_file_is_prepared_before_the_next_is_loaded(tmp_path):
    """Full-size photos are never all in memory at once (120 photos of 12 megapixels: 17 GB
    as float32 pixels when all were loaded before any was prepared, 1.3 GB this way)."""
    _photos(tmp_path / "a", 4)
    _Recording.events = []
    data = load_folder(tmp_path / "a", Reader(_Recording(), SIZE, 0), "A_DIR")
    assert _Recording.events == ["load", "prepare"] * 4
    assert {s.mode.split(":")[1] for s in data.samples} == {threading.main_thread().name}


def test_files_are_read_by_two_threads_at_once(tmp_path):
    """Each load waits until two are under way: with one reader thread this would stop with
    a broken barrier instead of reading."""
    _photos(tmp_path / "a", 12)
    domain = _Recording()
    domain.barrier = threading.Barrier(2, timeout=10)
    data = load_folder(tmp_path / "a", Reader(domain, SIZE, 2), "A_DIR")
    readers = {s.mode.split(":")[1] for s in data.samples}
    assert len(readers) == 2 and threading.main_thread().name not in readers


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("styletx-reader")]


def _stop_at_the_sixth_file(stop) -> tuple[list[int], list]:
    """200 reading jobs of which the sixth calls ``stop`` (by then both reader threads have
    started); the indices started."""
    started: list[int] = []

    def job(i):
        started.append(i)
        if i == 5:
            stop()
        threading.Event().wait(0.01)  # a file takes a moment to read
        return i

    return started, [lambda i=i: job(i) for i in range(200)]


def test_an_error_stops_the_reading_of_the_files_not_yet_started():
    """The reading ends with the error: the files not yet started are not read, and no reader
    thread goes on in the background."""
    from styletx.contract.errors import UsageError

    def fail():
        raise UsageError("--aligned: audio files do not hold pairs side by side")

    started, jobs = _stop_at_the_sixth_file(fail)
    with pytest.raises(UsageError):
        Reader(ImageDomain(), SIZE, 2).run(jobs, "A_DIR")
    assert len(started) <= 12 and not _reader_threads()


def test_ctrl_c_while_reading_stops_it():
    """Ctrl-C (SIGINT to the main thread) while the reader threads work: KeyboardInterrupt,
    the files not yet started are not read, no reader thread is left."""
    import signal

    def ctrl_c():
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    started, jobs = _stop_at_the_sixth_file(ctrl_c)
    # Python's own Ctrl-C handler, whatever this process inherited: a shell starts background
    # jobs (`pytest &`) with SIGINT ignored, and Python then installs none
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            Reader(ImageDomain(), SIZE, 2).run(jobs, "A_DIR")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(started) <= 12 and not _reader_threads()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_usage_error_while_reading_stops_with_its_own_message(tmp_path, workers):
    """Only a bad file is skipped; any other styletx error (here a usage error, as
    ``split_aligned`` raises for audio) comes out of a reader thread as the same one-line error."""
    from styletx.contract.errors import BadInputError, UsageError

    def job(i):
        if i == 5:
            raise UsageError("--aligned: audio files do not hold pairs side by side")
        if i == 2:
            raise BadInputError(f"f{i}.wav", "empty file")
        return i

    reader = Reader(ImageDomain(), SIZE, workers)
    with pytest.raises(UsageError, match=r"^--aligned: audio files do not hold pairs side by "
                                         r"side$"):
        reader.run([lambda i=i: job(i) for i in range(10)], "A_DIR")
    results = reader.run([lambda i=i: job(i) for i in range(5)], "A_DIR")
    assert results[:2] == [0, 1] and results[3:] == [3, 4]
    assert isinstance(results[2], BadInputError) and results[2].problem == "empty file"


def test_the_files_training_enlarges_much_are_counted_and_the_most_named(tmp_path, caplog,
                                                                       monkeypatch):
    """Files (and --aligned halves) whose shorter side is under half the load size of 36."""
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)  # as a CLI test left it
    _photos(tmp_path / "a", 3)
    for name, (h, w) in (("small.png", (17, 40)), ("tiny.png", (3, 5)), ("edge.png", (18, 30))):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "a" / name)
    reader = Reader(ImageDomain(), SIZE, 2)
    load_folder(tmp_path / "a", reader, "A_DIR")
    assert sorted((p.name, round(f, 1)) for p, f in reader.enlarged) == [("small.png", 2.1),
                                                                         ("tiny.png", 12.0)]
    reader.warn_enlarged(6)
    assert [r.getMessage().split(" (the most")[0] for r in caplog.records] == [
        "training enlarges 2 of the 6 files more than 2x, to the training scale of --size 32"]
    assert f"{tmp_path / 'a' / 'tiny.png'}, 12x" in caplog.records[0].getMessage()
    (tmp_path / "ab").mkdir()
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "ab" / "pair.png")
    reader = Reader(ImageDomain(), SIZE, 0)
    load_aligned(tmp_path / "ab", reader)
    assert [(p.name, round(f, 1)) for p, f in reader.enlarged] == [("pair.png", 3.6)] * 2
    caplog.clear()
    reader.warn_enlarged(1)  # one file, however many halves
    assert "training enlarges 1 of the 1 files" in caplog.records[0].getMessage()


def test_files_with_a_flaw_are_named_the_first_few_then_counted(tmp_path, caplog, monkeypatch):
    """Domain.training_flaw: each of the first five flawed files by name, then one line for
    the rest, so a folder of 300 clipped recordings does not print 300 lines."""
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    for i in range(8):
        Image.fromarray(np.full((8, 8, 3), 40 * (i % 2), np.uint8)).save(tmp_path / f"{i}.png")

    class Flawed(ImageDomain):
        def training_flaw(self, sample):
            return "all dark" if sample.pixels.max() == 0 else None

    reader = Reader(Flawed(), 8)
    load_folder(tmp_path, reader, "A_DIR")
    reader.warn_flawed(8)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / f'{i}.png'}: all dark; the model learns it as part of the style (leave "
        "the file out, or fix it)" for i in (0, 2, 4, 6)]
    for i in range(8, 14):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{i}.png")
    caplog.clear()
    reader = Reader(Flawed(), 8)
    load_folder(tmp_path, reader, "A_DIR")
    reader.warn_flawed(14)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 6 and messages[-1] == "... and 5 more of the 14 files have such flaws"
