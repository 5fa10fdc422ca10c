"""Training from Python as a library user calls it: the time budget counts from train(),
torch's global random state is the caller's again afterwards, bad settings are refused."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
import torch

import styletx
from styletx.engine.training.settings import started_now


def test_the_time_budget_counts_from_the_train_call():
    """A TrainSettings(minutes=...) made in an earlier notebook cell, or reused for a second
    run, had spent its budget before training began: the second run got 1 step."""
    settings = styletx.TrainSettings(minutes=0.25)
    assert settings.started is None  # nothing counts yet
    before = time.monotonic()
    started = started_now(settings)
    assert before <= started.started <= time.monotonic() and settings.started is None
    assert started_now(started).started == started.started  # a caller's own start is kept
    for minutes in (0, -1, float("inf"), float("nan")):
        with pytest.raises(styletx.UsageError, match="--minutes must be a number above 0"):
            started_now(styletx.TrainSettings(minutes=minutes))


@pytest.mark.parametrize("given, message", [
    ({"log_every": 0}, "--log-every must be at least 1 (got 0)"),
    ({"steps": 10.5}, "--steps must be a whole number (got 10.5)"),
    ({"steps": "100"}, "--steps must be a whole number (got '100')"),
    ({"save_every": -5}, "--save-every must be at least 1 (got -5)"),
    ({"preview_every": 0}, "--preview-every must be at least 1 (got 0)"),
    ({"workers": -1}, "--workers must be at least 0 (got -1)"),
    ({"seed": "abc"}, "--seed must be a whole number (got 'abc')"),
    ({"size": True}, "--size must be a whole number (got True)"),
    ({"save_minutes": 0}, "save_minutes must be a number above 0 (got 0)"),
])
def test_settings_a_python_caller_gets_wrong_are_refused_before_any_work(tmp_path, given,
                                                                         message):
    """A new user's trial: log_every=0 failed with a ZeroDivisionError after the first step
    (leaving a run folder), steps=10.5 trained 11 steps, save_every=-5 was taken; the CLI's
    option types refuse them all, and now train() does too, naming the option."""
    with pytest.raises(styletx.UsageError) as refused:
        styletx.train(tmp_path / "a", tmp_path / "b", tmp_path / "run",
                      settings=styletx.TrainSettings(**given))
    assert str(refused.value) == message
    assert not (tmp_path / "run").exists()


def test_numpy_numbers_are_taken_as_python_ones():
    """A np.int64 from a sweep reached config.json, which the json module cannot write."""
    import numpy as np

    from styletx.engine.training.settings import checked_settings

    settings = checked_settings(styletx.TrainSettings(steps=np.int64(3), seed=np.int32(2),
                                                      save_minutes=float("inf")))
    assert type(settings.steps) is int and type(settings.seed) is int
    assert settings.save_minutes == float("inf")  # no timed checkpoints
    assert styletx.set_threads(np.int64(1)) == 1


def test_settings_may_be_a_dict_of_its_fields(tmp_path):
    with pytest.raises(styletx.UsageError, match="^settings: TrainSettings has no 'step'$"):
        styletx.train(tmp_path / "a", tmp_path / "b", tmp_path / "run", settings={"step": 3})
    with pytest.raises(styletx.UsageError, match="^A_DIR .*: no such folder$"):  # taken
        styletx.train(tmp_path / "a", tmp_path / "b", tmp_path / "run", settings={"steps": 3})
    with pytest.raises(styletx.UsageError, match="^settings must be a TrainSettings, not a "
                                                 "list$"):
        styletx.train(tmp_path / "a", tmp_path / "b", tmp_path / "run", settings=[3])


@pytest.mark.parametrize("count", [0, -1, 2.5, "two", True])
def test_set_threads_refuses_what_is_not_a_count_and_sets_nothing(count, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(styletx.UsageError, match="^set_threads: count must be a whole number "
                                                 "of at least 1"):
        styletx.set_threads(count)
    assert os.environ["OMP_NUM_THREADS"] == "1"


def test_train_gives_the_callers_random_state_back(scenes, tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    settings = styletx.TrainSettings(steps=2, size=16, device="cpu", progress=False, seed=7)
    result = styletx.train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny",
                           settings=settings)
    assert torch.equal(torch.rand(3), expected)
    assert (result.step, result.planned, result.finished) == (2, 2, True) and result.losses
    again = styletx.train(scenes["a"], scenes["b"], tmp_path / "run", settings=settings)
    assert (again.step, again.finished, again.losses) == (2, True, {})  # nothing to do
    more = dataclasses.replace(settings, steps=4)
    assert styletx.train(scenes["a"], scenes["b"], tmp_path / "run", settings=more).finished
    assert not styletx.TrainResult(tmp_path / "run", 3, {}, planned=4).finished


def test_checkpoint_and_preview_periods_follow_a_revised_plan(scenes, tmp_path, monkeypatch):
    """--minutes planned 100 steps, then found only 40 fit: previews every 4 steps (a tenth
    of 40), not every 10 (a tenth of the first plan)."""
    from styletx.engine.training import loop

    monkeypatch.setattr(loop, "steps_in_budget", lambda *args: 100)
    revisions = iter([40])
    monkeypatch.setattr(loop.Budget, "revised_total",
                        lambda self, step, total, now: next(revisions, None) if step == 2
                        else None)
    run = tmp_path / "run"
    result = styletx.train(scenes["a"], scenes["b"], run, preset="tiny",
                           settings=styletx.TrainSettings(minutes=10, size=16, device="cpu",
                                                          progress=False))
    assert result.step == 40
    steps = sorted(int(p.stem.split("-")[1]) for p in (run / "samples").glob("step-*.png"))
    assert steps == list(range(4, 41, 4))
