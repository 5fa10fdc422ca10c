"""The example third-party plugin (examples/styletx-colormatch), end to end as a user runs it:
pip-install it, see it in `styletx plugins`, train with it, convert with it, and check that the
conversions moved the colours towards the true B images. Also: the plugin guide's excerpts of
the example are copied from the real files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styletx.demo import make_image_dataset

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "styletx-colormatch"
DIST = "styletx-colormatch"


def run(*args: str | Path, **env: str) -> subprocess.CompletedProcess:
    """The styletx CLI in a fresh process (entry points are read at start-up)."""
    environ = {k: v for k, v in os.environ.items() if k != "STYLETX_DISABLE_PLUGIN_AUTOLOAD"}
    return subprocess.run(
        [sys.executable, "-m", "styletx.cli", *map(str, args)],
        capture_output=True, text=True, timeout=120, env={**environ, **env},
    )


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example installed as a regular package (built from a copy, so the source tree stays
    clean), uninstalled afterwards."""
    source = tmp_path_factory.mktemp("example") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                   "__pycache__"))
    pip("install", "--no-deps", "--no-build-isolation", "-q", str(source))
    yield
    pip("uninstall", "-y", "-q", DIST)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return make_image_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_test=4, size=32)


@pytest.fixture(scope="module")
def trained(installed, folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cm"
    result = run("train", folders["a"], folders["b"], "--out", out, "--model", "colormatch",
                 "--preset", "tiny", "--steps", "30", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return out


def plugins_json(**env: str) -> dict[str, dict]:
    result = run("plugins", "--json", **env)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}


@pytest.mark.slow
def test_listed_by_plugins_command(installed):
    plugin = plugins_json()["colormatch"]
    assert plugin["version"] == "0.1.0"
    assert plugin["builtin"] is False
    assert plugin["error"] is None
    assert plugin["registers"] == {"translators": ["colormatch"]}


@pytest.mark.slow
def test_autoload_can_be_disabled(installed):
    plugins = plugins_json(STYLETX_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "colormatch" not in plugins
    assert "cyclegan" in plugins  # built-ins still load


@pytest.mark.slow
def test_train_writes_a_run(trained):
    assert (trained / "model.safetensors").is_file()
    config = json.loads((trained / "config.json").read_text())
    assert (config["translator"], config["preset"], config["step"]) == ("colormatch", "tiny", 30)


def channel_means(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32).mean(axis=(0, 1)) / 255


@pytest.mark.slow
def test_convert_moves_colours_towards_b(trained, folders, tmp_path):
    out = tmp_path / "converted"
    result = run("convert", trained, folders["test_a"], "-o", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    inputs = sorted(folders["test_a"].iterdir())
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in inputs]
    for src in inputs:
        with Image.open(src) as a, Image.open(out / src.name) as b:
            assert a.size == b.size

    # Per-image, per-channel mean colour: conversions must be closer to the truth than inputs.
    truth = np.stack([channel_means(folders["test_b"] / p.name) for p in inputs])
    before = np.abs(np.stack([channel_means(p) for p in inputs]) - truth).mean()
    after = np.abs(np.stack([channel_means(out / p.name) for p in inputs]) - truth).mean()
    assert after < 0.7 * before, (before, after)


def test_guide_excerpts_match_the_example():
    """Every block marked ``<!-- excerpt: FILE -->`` in docs/plugins.md appears verbatim in FILE."""
    guide = (ROOT / "docs" / "plugins.md").read_text()
    excerpts = re.findall(r"<!-- excerpt: (\S+) -->\n```\w*\n(.*?)```", guide, re.S)
    assert len(excerpts) >= 8
    for path, code in excerpts:
        assert code in (ROOT / path).read_text(), f"docs/plugins.md excerpt not in {path}:\n{code}"


@pytest.mark.slow
def test_trains_on_two_processes_through_forward_for(installed, folders, tmp_path):
    """A third-party translator that runs its forward pass through ``forward_for`` trains under
    DistributedDataParallel like the built-ins: two gloo processes, one report, one run."""
    out = tmp_path / "cm2"
    result = run("train", folders["a"], folders["b"], "--out", out, "--model", "colormatch",
                 "--preset", "tiny", "--steps", "6", "--device", "cpu", "--nproc", "2",
                 OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("run folder:") == 1
    assert json.loads((out / "config.json").read_text())["step"] == 6
