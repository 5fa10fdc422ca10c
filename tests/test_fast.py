"""The `fast` presets, --minutes, the default checkpoint interval and the thread policy."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from styletx.contract.registry import get_registry
from styletx.demo import load_rgb, make_paired_image_dataset
from styletx.engine.convert import load_run
from styletx.engine.model import make_config
from styletx.engine.threads import default_threads, physical_cores, set_threads
from styletx.engine.training import TrainSettings, train
from styletx.engine.training.budget import BUDGET_SHARE, Budget
from styletx.engine.training.checkpoints import save_interval
from styletx.image.metrics import psnr
from styletx.nn import linear_decay

MODELS = ("cyclegan", "pix2pix", "vaegan")


def assert_same_weights(run, other) -> None:
    a, b = (load_file(r / "model.safetensors") for r in (run, other))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def held_out_psnr(run, folders) -> tuple[float, float]:
    """Mean PSNR against the truth of the untouched held-out inputs and of their conversions."""
    model = load_run(run, device="cpu")
    before, after = [], []
    for path in sorted(folders["test_a"].glob("*.png")):
        x, truth = load_rgb(path), load_rgb(folders["test_b"] / path.name)
        y = np.asarray(model.convert_array((x * 255).round().astype(np.uint8)), np.float32)
        before.append(psnr(x, truth))
        after.append(psnr(y / 255 if y.max() > 1.5 else y, truth))
    return float(np.mean(before)), float(np.mean(after))


def fast_translator(model: str):
    """A fresh RGB -> RGB translator of ``model``'s fast preset, as training at 32 px builds it."""
    cls = get_registry().translator(model)
    config = cls.config_for_data(make_config(cls, "fast", {}, "image"),
                                 {"a": (3, 32, 32), "b": (3, 32, 32)}, (32, 32))
    torch.manual_seed(0)
    return cls(config, 3, 3)


@pytest.mark.parametrize("model", MODELS)
def test_fast_preset_starts_as_the_identity(model):
    """Output = input at step 0, so a fast model cannot be worse than doing nothing at first."""
    translator = fast_translator(model)
    translator.train(False)
    x = torch.rand(2, 3, 24, 40) * 2 - 1
    for direction in translator.directions if model == "pix2pix" else ("a2b", "b2a"):
        assert torch.allclose(translator.translate(x, direction), x, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("model,steps", [("cyclegan", 300), ("pix2pix", 200), ("vaegan", 200)])
def test_fast_preset_beats_the_untouched_input(model, steps, scenes, tmp_path):
    """A colour grade with a known answer, learned in a few hundred steps: held-out conversions
    are measurably closer to the truth than the inputs were (unpaired for cyclegan and vaegan,
    pairs for pix2pix)."""
    folders = scenes
    if model == "pix2pix":
        folders = make_paired_image_dataset(tmp_path / "pairs", n_train=12, n_test=3, size=40)
    run = tmp_path / "run"
    train(folders["a"], folders["b"], run, model=model, preset="fast",
          settings=TrainSettings(steps=steps, size=32, device="cpu", progress=False))
    before, after = held_out_psnr(run, folders)
    assert after > before + 1.0, (before, after)


def test_the_fast_cyclegans_colour_pull_grows_with_the_files():
    """2.5 for a few photos a side (their subjects differ as much as a style does), 5 from 96
    (many photos average their subjects out), as the square root of the count between."""
    from styletx.plugins.cyclegan import colour_pull_for_files

    pulls = [colour_pull_for_files(n) for n in (1, 9, 24, 25, 54, 95, 96, 2500, 20_000)]
    assert pulls[:3] == [2.5] * 3 and pulls[-3:] == [5.0] * 3
    assert pulls[4] == 3.75 and pulls == sorted(pulls) and 2.5 < pulls[3] < pulls[5] < 5


def test_the_fast_cyclegan_compares_regions_colours_from_96_files():
    """Pixels below 96 files a side (regions carried more of a few photos' subjects), the
    means of 4x4 blocks from there (+1.0 and +4.1 dB on 2,500 small photos a side)."""
    from styletx.plugins.cyclegan import CycleGAN, colour_region_for_files

    assert [colour_region_for_files(n) for n in (1, 24, 48, 95, 96, 2500)] == [1, 1, 1, 1, 4, 4]
    assert CycleGAN.presets["fast"].by_files(100) == {"lambda_sw": 5.0, "sw_region": 4}
    assert CycleGAN.presets["fast"].by_files(40) == {"lambda_sw": 3.23, "sw_region": 1}


def many_small_photos(root, files: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    folders = {side: root / side for side in "ab"}
    for side, folder in folders.items():
        folder.mkdir(parents=True)
        for i in range(files + (side == "b")):  # the smaller side counts
            pixels = rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folders


def test_a_presets_values_for_the_number_of_files_are_the_runs(tmp_path, messages):
    """The fast CycleGAN's colour-loss weight depends on the files a side: it is chosen once
    the folders are read, said, and saved in config.json (what a resume and convert rebuild);
    the user's --set wins."""
    folders = many_small_photos(tmp_path, 40)
    settings = TrainSettings(steps=1, size=32, device="cpu", progress=False)

    def trained_weight(name: str, overrides=None) -> float:
        train(folders["a"], folders["b"], tmp_path / name, model="cyclegan", preset="fast",
              overrides=overrides, settings=settings)
        return json.loads((tmp_path / name / "config.json").read_text())["config"]["lambda_sw"]

    assert trained_weight("run") == pytest.approx(2.5 * (40 / 24) ** 0.5, abs=0.01)
    assert ("fast preset with 40 file(s) on the smaller side: lambda_sw=3.23, sw_region=1"
            in messages)
    messages.clear()
    assert trained_weight("mine", {"lambda_sw": 1.0}) == 1.0
    assert [m for m in messages if "smaller side" in m] == [
        "fast preset with 40 file(s) on the smaller side: sw_region=1"]
    model = load_run(tmp_path / "run", device="cpu")
    assert model.translator.config.lambda_sw == pytest.approx(3.23)


@pytest.fixture
def messages():
    """What the styletx logger says (the CLI tests turn its propagation to the root off)."""
    said: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append(record.getMessage())
    log = logging.getLogger("styletx")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield said
    log.removeHandler(handler)
    log.setLevel(level)


def test_minutes_plans_the_steps_and_the_schedule(scenes, tmp_path, messages):
    """A new run with --minutes and no --steps times its first steps and saves the number of
    steps that fit as the run's total, which the lr schedule follows; it ends there or, on a
    slower machine, when the time is spent, saying so."""
    run = tmp_path / "run"
    result = train(scenes["a"], scenes["b"], run, preset="tiny",
                   settings=TrainSettings(minutes=0.05, size=16, device="cpu", progress=False))
    config = json.loads((run / "config.json").read_text())
    planned = config["train"]["steps"]
    assert planned >= 1 and config["step"] == result.step
    text = "\n".join(messages)
    assert f"so {planned} steps" in text or f": {planned} steps fit" in text  # planned, revised
    assert result.step == planned or "time is up" in text
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    # the rate the last step ran at: the schedule's at the steps before it
    assert last["lr"]["G"] == pytest.approx(1e-3 * linear_decay(planned)(last["step"] - 1))


def test_minutes_timing_changes_nothing(scenes, tmp_path, monkeypatch):
    """The timed steps are undone: a --minutes run is the same as a --steps run of its total.
    (The real timing runs, but reports 60 s a step, so that 10 minutes plan a few steps.)"""
    from styletx.engine.training import budget

    time_steps = budget.time_steps
    monkeypatch.setattr(budget, "time_steps", lambda *args: time_steps(*args) * 0 + 60.0)
    timed = train(scenes["a"], scenes["b"], tmp_path / "timed", preset="tiny",
                  settings=TrainSettings(minutes=10, size=16, device="cpu", progress=False))
    assert 5 <= timed.step <= 9
    plain = train(scenes["a"], scenes["b"], tmp_path / "plain", preset="tiny",
                  settings=TrainSettings(steps=timed.step, size=16, device="cpu",
                                         progress=False))
    assert plain.step == timed.step
    assert_same_weights(tmp_path / "timed", tmp_path / "plain")


def test_minutes_mostly_spent_reading_says_so(scenes, tmp_path, monkeypatch, messages):
    """20,000 files a side with --minutes 1 read for 60 s, then planned and trained one step,
    exit 0, no warning (a scale trial). Now the reading's share is named in a warning."""
    from styletx.engine.training import budget

    monkeypatch.setattr(budget, "time_steps", lambda *args: 10.0)
    result = train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny",
                   settings=TrainSettings(minutes=1, size=16, device="cpu", progress=False,
                                          started=time.monotonic() - 40))
    assert result.step <= 2
    assert any("reading the training files took 4" in m and "of the 60, so only" in m
               for m in messages), messages


def test_minutes_spent_saves_and_resumes(scenes, tmp_path, monkeypatch):
    """With --steps too, --minutes is a limit: when it is spent the run saves and returns (no
    error); the same command continues from that step."""
    clock = iter(range(0, 10_000, 30))  # each look at the clock: 30 s later
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    run = tmp_path / "run"
    first = train(scenes["a"], scenes["b"], run, preset="tiny",
                  settings=TrainSettings(steps=50, minutes=2, size=16, device="cpu",
                                         progress=False, workers=0, started=0.0))
    assert 0 < first.step < 50
    assert json.loads((run / "config.json").read_text())["step"] == first.step
    monkeypatch.undo()
    second = train(scenes["a"], scenes["b"], run, preset="tiny",
                   settings=TrainSettings(steps=50, size=16, device="cpu", progress=False))
    assert second.step == 50


def test_the_plain_progress_line_never_promises_more_than_the_budget(scenes, tmp_path,
                                                                    monkeypatch, messages):
    """Without a terminal, the progress line's time left came from the last log period's speed
    alone and said 16 minutes in a 1-minute run; with --minutes it ends by the deadline."""
    clock = iter(range(0, 10_000, 7))  # each look at either clock: 7 s later
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(clock)))
    train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny",
          settings=TrainSettings(steps=500, minutes=1, size=16, device="cpu", progress=False,
                                 workers=0, started=0.0, log_every=1))
    left = [line.split(" steps/s, ")[1].split(" left)")[0] for line in messages
            if " steps/s, " in line]
    assert left and all(minutes == "0" and int(secs) <= 60
                        for minutes, secs in (t.split(":") for t in left)), left


def test_default_save_interval_scales_with_the_run(scenes, tmp_path):
    assert [save_interval(n) for n in (5, 300, 3000, 100_000)] == [1, 30, 300, 500]
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny",
          settings=TrainSettings(steps=20, size=16, device="cpu", progress=False))
    previews = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert previews[0] == "step-000002.png" and len(previews) == 10


def test_thread_policy(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert default_threads() == 1  # never 0, however many processes share the cores
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_threads() == physical_cores() <= len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"  # for Numba and child processes
    finally:
        torch.set_num_threads(before)


def test_threads_option(styletx, trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # restored afterwards
    before = torch.get_num_threads()
    try:
        result = styletx("convert", trained_run, trained_run / "samples", "-o", tmp_path / "o",
                         "--threads", "1")
        assert torch.get_num_threads() == 1, result.stderr
    finally:
        torch.set_num_threads(before)
    assert styletx("convert", trained_run, "x.png", "-o", tmp_path, "--threads", "0"
                   ).exit_code == 2


@pytest.mark.parametrize("command", ["train", "convert", "evaluate", "export", "sample",
                                     "traverse", "score", "demo"])
def test_every_computing_command_takes_threads(styletx, command):
    """The README tells users of a shared machine to give every job --threads 1."""
    assert "--threads" in styletx(command, "--help").stdout


@pytest.mark.parametrize("model", MODELS)
def test_fast_export_module_matches_translate(model):
    """The identity-start pieces (colour path, detail skip) are part of the exported module."""
    translator = fast_translator(model)
    with torch.no_grad():  # away from the identity start, so every path counts
        for net in translator.networks().values():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    translator.train(False)
    x = torch.rand(1, 3, 28, 36) * 2 - 1
    y = translator.translate(x, "a2b")
    assert not torch.allclose(y, x, atol=1e-3)
    exported = translator.export_module("a2b").eval()
    with torch.no_grad():
        if model == "cyclegan":  # the exporter pads to the size multiple; 28 x 36 needs none
            assert torch.allclose(exported(x), y, atol=1e-5)
        else:
            assert torch.allclose(exported(x)[..., :28, :36], y, atol=1e-5)


def test_budget_revises_a_plan_once_early_on():
    settings = TrainSettings(minutes=10, started=time.monotonic())
    budget = Budget(settings, step=0, replan=True)
    at = budget.revise_at
    assert at - budget.began == pytest.approx(0.1 * (budget.deadline - budget.began))
    assert budget.revised_total(100, 3000, at - 1) is None  # not yet
    revised = budget.revised_total(500, 3000, at)  # 500 steps in a tenth: ~4x faster than planned
    rate = 500 / (at - budget.began)  # as the budget computes it: the same rounding
    assert revised == 500 + int(BUDGET_SHARE * (budget.deadline - at) * rate)
    assert budget.revised_total(600, revised, at + 1) is None  # once only
    late = Budget(settings, step=0, replan=True)
    assert late.revised_total(2000, 3000, late.revise_at) is None  # the lr may be decaying
    early = Budget(settings, step=0, replan=True)  # a tenth of the steps before a tenth of the
    assert early.revised_total(300, 3000, early.began + 1) is None  # time, but too soon to tell
    assert early.revised_total(300, 3000, early.began + 6) > 3000  # the plan was too cautious
    assert Budget(settings, step=0, replan=False).revised_total(1, 3000, 1e12) is None


def test_a_revised_plan_is_the_run_of_its_step_count(scenes, tmp_path, monkeypatch):
    """Revised at step 4 from 10 to 16 steps, a run ends with the weights of a --steps 16 run:
    the lr is constant until then, and the optimizer and scheduler state carry over."""
    from styletx.engine.training import budget

    monkeypatch.setattr(budget, "time_steps", lambda *args: 60.0)  # 10 minutes: 9 steps
    monkeypatch.setattr(Budget, "revised_total",
                        lambda self, step, total, now: 16 if step == 4 else None)
    revised = train(scenes["a"], scenes["b"], tmp_path / "revised", preset="tiny",
                    settings=TrainSettings(minutes=10, size=16, device="cpu", progress=False))
    monkeypatch.undo()
    plain = train(scenes["a"], scenes["b"], tmp_path / "plain", preset="tiny",
                  settings=TrainSettings(steps=16, size=16, device="cpu", progress=False))
    config = json.loads((tmp_path / "revised" / "config.json").read_text())
    assert revised.step == plain.step == config["train"]["steps"] == 16
    assert_same_weights(tmp_path / "revised", tmp_path / "plain")
