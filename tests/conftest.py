"""Shared fixtures: small generated data and a CLI runner that checks for tracebacks."""

from __future__ import annotations

import os

# Under pytest-xdist each test process computes with its share of the cores (set before torch
# starts, and inherited by the CLIs the tests run): two processes of two threads each on two
# cores wait on each other (see styletx.engine.threads).
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ["OMP_NUM_THREADS"] = str(max(1, (cpus or 1) // int(
        os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

import shutil
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from styletx.cli import cli
from styletx.demo import make_image_dataset

# The suite may run as a background job (`.ci/run &`), where SIGINT is ignored and styletx,
# rightly, keeps it so; the tests that send themselves (or the CLIs they start) a Ctrl-C need
# Python's own handler.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def voices(tmp_path_factory) -> dict[str, Path]:
    """Synthetic voices (styletx.audio.synth): LOW in a/, HIGH in b/ saying other texts, and
    held-out texts said by both in test_a/ and test_b/ under the same names."""
    from styletx.audio.synth import write_voice_folders

    return write_voice_folders(tmp_path_factory.mktemp("voices"), n_train=6, n_test=2,
                               seconds=2.0)


def held_out_voices(source: Path, converted: Path, truth: Path):
    """For each held-out sentence of ``truth``: its name, and as float32 waves the source, the
    conversion (in ``converted``, under the same name) and the truth; then the conversion's
    sample rate."""
    import soundfile as sf

    for path in sorted(truth.glob("*.flac")):
        original, _ = sf.read(source / path.name, dtype="float32")
        output, rate = sf.read(converted / path.name, dtype="float32")
        true, _ = sf.read(path, dtype="float32")
        yield path.name, original, output, true, rate


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> dict[str, Path]:
    """Unpaired a/ and b/ (b = winterized other scenes), held-out test_a/ and its truth test_b/."""
    return make_image_dataset(tmp_path_factory.mktemp("scenes"), n_train=12, n_test=3, size=40)


@pytest.fixture
def data(scenes, tmp_path) -> dict[str, Path]:
    """A private copy of the scenes that a test may change."""
    return {name: Path(shutil.copytree(folder, tmp_path / name)) for name, folder in scenes.items()}


class Result:
    def __init__(self, result):
        self.exit_code, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr
        self.exception = result.exception

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("Error")]

    @property
    def warning_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("Warning")]


@pytest.fixture
def styletx():
    """Run the CLI in-process; fails the test on any traceback (an unhandled exception)."""

    def run(*args: str | Path) -> Result:
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert "Traceback" not in result.output
        return Result(result)

    return run


TINY = ("--preset", "tiny", "--device", "cpu")


@pytest.fixture(scope="session")
def trained_run(scenes, tmp_path_factory) -> Path:
    """A tiny CycleGAN trained for a few steps (for conversion and error tests)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = CliRunner().invoke(
        cli, ["train", str(scenes["a"]), str(scenes["b"]), "--out", str(run), *TINY,
              "--steps", "4", "--size", "16"],
    )
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="session", autouse=True)
def private_user_cache(tmp_path_factory):
    """The tests' plugin listing and step times go to a cache folder of their own, never to
    the user's ~/.cache/styletx (subprocesses inherit it)."""
    import os

    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
