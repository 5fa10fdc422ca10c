"""Training from Python as a library user calls it: the time budget counts from train(),
torch's global random state is the caller's again afterwards, a bad budget is refused."""

from __future__ import annotations

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


def test_train_gives_the_callers_random_state_back(scenes, tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    styletx.train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny",
                  settings=styletx.TrainSettings(steps=2, size=16, device="cpu", progress=False,
                                                 seed=7))
    assert torch.equal(torch.rand(3), expected)


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
