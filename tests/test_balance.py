"""Debiasing by resampling (--balance): the weights favour rare examples, the sampler draws by
them, reproducibly across a resume, and a real training run draws a rare kind more often."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import TINY

from styletx.demo import make_scene, save_rgb, winterize
from styletx.engine.balance import (
    describe,
    effective_dimensions,
    effective_examples,
    elbo_weights,
    inverse_density_weights,
    with_uniform,
)
from styletx.engine.data import CropSampler


def _latents(n_common=95, n_rare=5, dims=8, seed=0):
    """Pooled latents of a data set where 5 % of the examples are of another kind: they sit
    away from the rest in two of the dimensions."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_common + n_rare, dims, generator=g)
    z[n_common:, :2] += 6.0
    return z, torch.arange(n_common + n_rare) >= n_common


def test_rare_examples_get_a_share_well_above_their_count():
    z, rare = _latents()
    weights = inverse_density_weights(z, smoothing=0.001)
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=weights.dtype))
    share = float(weights[rare].sum())
    # 5 % of the data, 36 to 82 % of the draws (measured over seeds 0-4); common examples in
    # the tails of the six dimensions where the two kinds do not differ gain too
    assert share > 0.25
    assert weights[rare].min() > weights[~rare].median() * 5


def test_flattening_keeps_the_ranking_and_spreads_the_draws():
    """With a floor of half the examples the draws spread over at least 50 effective
    examples, the rare kind still leads and is drawn several times its 5 %; without a floor
    the weights are as estimated."""
    z, rare = _latents()
    sharp = inverse_density_weights(z, smoothing=0.001)
    flat = inverse_density_weights(z, smoothing=0.001, min_effective=0.5)
    assert effective_examples(sharp) < 50 <= effective_examples(flat) < 51
    assert torch.equal(sharp.argsort(), flat.argsort())
    assert 0.15 < float(flat[rare].sum()) < float(sharp[rare].sum())
    assert torch.equal(inverse_density_weights(z, smoothing=0.001, min_effective=0.0), sharp)
    assert torch.allclose(inverse_density_weights(z, 0.001, min_effective=1.0),
                          torch.full((100,), 0.01, dtype=torch.float64))


def test_elbo_weights_favour_what_the_model_explains_worst():
    """The examples with the highest negative ELBO are drawn most, the draws spread over the
    floor's share of the examples, and equal scores give uniform draws."""
    g = torch.Generator().manual_seed(0)
    scores = 0.2 + 0.02 * torch.rand(100, generator=g)
    scores[95:] = 0.5  # a kind the model has seen too little of
    weights = elbo_weights(scores, min_effective=0.5)
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=weights.dtype))
    assert 50 <= effective_examples(weights) < 51
    assert weights[95:].min() > weights[:95].max()
    assert 0.15 < float(weights[95:].sum()) < 0.3  # 5 % of the data, about a quarter of draws
    assert torch.allclose(elbo_weights(torch.full((10,), 0.3), 0.5),
                          torch.full((10,), 0.1, dtype=torch.float64))


def test_effective_dimensions():
    g = torch.Generator().manual_seed(0)
    independent = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    assert 5.5 < effective_dimensions(independent) <= 6.0
    one = torch.randn(2000, 1, generator=g, dtype=torch.float64)
    assert effective_dimensions(one * torch.tensor([[1.0, -2.0, 5.0, 0.1]])) == pytest.approx(1.0)


def test_smoothing_moves_towards_uniform():
    z, rare = _latents()
    shares = [float(inverse_density_weights(z, s)[rare].sum()) for s in (0.001, 0.1, 10.0)]
    assert shares[0] > shares[1] > shares[2] > 0.05
    assert abs(shares[2] - 0.05) < 0.02  # heavy smoothing: almost the data's own 5 %


def test_uniform_data_gives_near_uniform_weights():
    z = torch.linspace(-1, 1, 100)[:, None].repeat(1, 4)  # evenly spread: every bin equal
    weights = inverse_density_weights(z, smoothing=0.001)
    assert describe(weights)["effective_examples"] > 99
    constant = inverse_density_weights(torch.zeros(10, 3), smoothing=0.001)
    assert torch.allclose(constant, torch.full((10,), 0.1, dtype=constant.dtype))


def test_sampler_draws_by_the_weights_and_restores_them():
    examples = {side: [torch.full((1, 4, 4), float(i)) for i in range(20)] for side in "ab"}
    for example in examples["a"] + examples["b"]:
        example[0, -1, -1] += 0.5  # not flat: a flat crop is drawn again (test_flat_crops)
    sampler = CropSampler(examples, (4, 4), batch_size=50, flip=False, paired=False, seed=1)
    weights = torch.zeros(20, dtype=torch.float64)
    weights[3], weights[7] = 0.75, 0.25
    sampler.weights["a"] = weights
    state = sampler.state_dict()
    drawn = torch.cat([sampler.next_batch()["a"][:, 0, 0, 0] for _ in range(20)])
    assert set(drawn.tolist()) == {3.0, 7.0}
    assert abs(float((drawn == 3).float().mean()) - 0.75) < 0.05
    again = CropSampler(examples, (4, 4), batch_size=50, flip=False, paired=False, seed=1)
    again.load_state_dict(state)
    redrawn = torch.cat([again.next_batch()["a"][:, 0, 0, 0] for _ in range(20)])
    assert torch.equal(drawn, redrawn)
    assert again.weights["b"] is None  # side b still uniform



def test_saved_weights_for_another_number_of_files_are_estimated_again(caplog, monkeypatch):
    """Files removed from (or added to) a folder between two runs of the same command: the
    checkpoint's weights and epoch order (one entry per example) no longer fit, and are
    dropped (they drew an example that is no longer there: an IndexError), with a line."""
    def examples(count):
        return {side: [torch.rand(1, 4, 4) for _ in range(count)] for side in "ab"}

    sharded = CropSampler(examples(12), (4, 4), batch_size=4, flip=False, paired=False, seed=0,
                          world=2)
    sharded.weights["a"] = torch.full((12,), 1 / 12, dtype=torch.float64)
    sharded.next_batch()
    state = sharded.state_dict()
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="styletx"):
        fewer = CropSampler(examples(10), (4, 4), batch_size=4, flip=False, paired=False, seed=0,
                            world=2)
        fewer.load_state_dict(state)
    assert fewer.weights["a"] is None and fewer.weights_dropped
    assert fewer.orders["a"] is None and fewer.orders["b"] is None
    assert {"A: the --balance weights are estimated again", "B: a new epoch begins",
            "B: 10 training examples now, 12 at the checkpoint: training goes on with the "
            "folder as it is now (encoders fitted when the run began are kept)"
            } <= set(caplog.messages)
    for _ in range(10):
        fewer.next_batch()
    same = CropSampler(examples(12), (4, 4), batch_size=4, flip=False, paired=False, seed=0,
                       world=2)
    same.load_state_dict(state)
    assert torch.equal(same.weights["a"], state["weights_a"]) and not same.weights_dropped
    assert torch.equal(same.orders["b"], state["order_b"])


def _scenes_with_two_noise_images(folder) -> set[str]:
    """38 scenes and 2 uniform-noise images in ``folder``/a, 40 winter scenes in /b; returns
    the noise images' names."""
    rng = np.random.default_rng(0)
    rare = {"img07.png", "img23.png"}
    for i in range(40):
        name = f"img{i:02d}.png"
        save_rgb(rng.uniform(0, 1, (40, 40, 3)) if name in rare else make_scene(rng, 40),
                 folder / "a" / name)
        save_rgb(winterize(make_scene(rng, 40)), folder / "b" / name)
    return rare


def _train_drawing(styletx, folder, monkeypatch, *options) -> tuple[list[str], object]:
    """Train a tiny vaegan on ``folder`` with ``options``; the names of the A examples drawn,
    in order, and the command's result."""
    drawn = []
    index = CropSampler._index

    def spy(self, side):
        i = index(self, side)
        if side == "a":
            drawn.append(i)
        return i

    monkeypatch.setattr(CropSampler, "_index", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_latent: tiny networks on 2 shared cores
    try:
        result = styletx("train", folder / "a", folder / "b", "--model", "vaegan", *TINY,
                         *options, "--out", folder / "run")
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.stderr
    names = sorted(f"img{i:02d}.png" for i in range(40))
    return [names[i] for i in drawn], result


def test_training_with_balance_by_elbo_draws_what_the_model_explains_worst(
        styletx, tmp_path, monkeypatch):
    """The same data with the default --balance-by elbo: once the model has learnt the scenes
    (early on it explains nothing well and favours busy scenes), the noise images, which it
    cannot reconstruct, are drawn most."""
    rare = _scenes_with_two_noise_images(tmp_path)
    drawn, _ = _train_drawing(styletx, tmp_path, monkeypatch, "--steps", "300", "--balance",
                              "--balance-every", "50")  # the default rule: elbo
    share = sum(name in rare for name in drawn[200 * 4:]) / len(drawn[200 * 4:])
    # measured: 21 % from step 200 on (18 % from step 150; 5 % of the data)
    assert share > 0.15, share
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    last = [e for e in map(json.loads, log) if "balance" in e][-1]["balance"]["a"]
    assert rare & {name for name, _ in last["most_drawn"]}  # measured: both, the top two
    assert 19.9 <= last["effective_examples"] <= 20.1  # half the examples: the default floor


def test_training_with_balance_draws_a_rare_kind_more_often(styletx, tmp_path, monkeypatch):
    """38 scenes and 2 noise images in A: after the first re-estimate the noise is drawn far
    more often than its 5 % of the data, and the log names it."""
    rare = _scenes_with_two_noise_images(tmp_path)
    drawn, result = _train_drawing(styletx, tmp_path, monkeypatch, "--steps", "150",
                                   "--balance", "--balance-by", "latent",
                                   "--balance-every", "25")
    after = drawn[25 * 4:]  # from the first re-estimate on a trained model
    share = sum(name in rare for name in after) / len(after)
    # measured: 37 %, 26 %, 35 % (data seeds 0, 1, 2) before the default floor of half the
    # examples; with it 24 % (seed 0). Random stripes as the rare kind, which the tiny model's
    # pooled latent barely separates from scenes, stayed at 4-6 % (250 steps, re-estimates
    # every 50, seeds 0 and 1).
    assert share > 0.15, share
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    balance = [e for e in map(json.loads, log) if "balance" in e]
    assert [e["step"] for e in balance] == [0, 25, 50, 75, 100, 125]
    last = balance[-1]["balance"]["a"]
    assert rare & {name for name, _ in last["most_drawn"]}  # the 3 most drawn files
    assert last["effective_examples"] < 40
    assert "most often img" in result.stderr


def test_share_keeps_a_uniform_floor():
    z, rare = _latents()
    full = inverse_density_weights(z, smoothing=0.001)
    half = with_uniform(full, 0.5)
    assert torch.isclose(half.sum(), torch.tensor(1.0, dtype=half.dtype))
    assert half.min() >= 0.5 / len(half)
    assert float(half[rare].sum()) == pytest.approx(0.5 * float(full[rare].sum()) + 0.025)
    assert torch.equal(with_uniform(full, 1.0), full)
    # share 0 draws uniformly through the weighted sampler: the latent benchmark's null arm
    assert torch.allclose(with_uniform(full, 0.0), torch.full_like(full, 1 / len(full)))


def test_balance_share_out_of_range_is_a_usage_error(styletx, scenes, tmp_path):
    result = styletx("train", scenes["a"], scenes["b"], "--model", "vaegan", *TINY,
                     "--balance", "--balance-share", "1.5", "--out", tmp_path / "run")
    assert result.exit_code == 2, result.stderr
    assert "--balance-share must be between 0 and 1 (got 1.5)" in result.error_lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("options", "error"), [
    (("--balance-every", "5"), "--balance-every set(s) how --balance draws; add --balance"),
    (("--balance", "--balance-every", "0"), "--balance-every must be at least 1 (got 0)"),
    (("--balance", "--balance-smoothing", "-1"),
     "--balance-smoothing must be a number >= 0 (got -1.0)"),
    (("--balance", "--balance-smoothing", "nan"),
     "--balance-smoothing must be a number >= 0 (got nan)"),
    (("--balance", "--balance-smoothing", "inf"),
     "--balance-smoothing must be a number >= 0 (got inf)"),
    (("--balance", "--model", "cyclegan"), "--balance needs a model with a latent space"),
])
def test_balance_options_are_checked_before_the_files_are_read(styletx, scenes, tmp_path,
                                                                 options, error):
    """--balance-every without --balance was ignored; a wrong value's error named two options;
    --balance on a cyclegan was refused only after every file was read."""
    result = styletx("train", scenes["a"], scenes["b"], "--model", "vaegan", *TINY, *options,
                     "--out", tmp_path / "run")
    assert result.exit_code == 2, result.stderr
    assert result.error_lines == [f"Error: {error}"] or error in result.error_lines[0]
    assert "readable image file" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_balanced_run_resumes_balanced(styletx, scenes, tmp_path):
    """--balance was not saved: a resume without it drew uniformly, without a word."""
    run = tmp_path / "run"
    command = ("train", scenes["a"], scenes["b"], "--model", "vaegan", *TINY, "--size", "16",
               "--out", run)
    first = styletx(*command, "--steps", "4", "--balance", "--balance-every", "2")
    assert first.exit_code == 0, first.stderr
    saved = json.loads((run / "config.json").read_text())["train"]["balance"]
    assert saved["balance_every"] == 2 and saved["balance_by"] == "elbo"
    resumed = styletx(*command, "--steps", "8")
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming with the run's --balance (balance-by elbo, balance-every 2" in resumed.stderr
    steps = [e["step"] for e in map(json.loads, (run / "log.jsonl").read_text().splitlines())
             if "balance" in e]
    assert steps == [0, 2, 4, 6]
    other = styletx(*command, "--steps", "10", "--balance", "--balance-every", "3")
    assert other.exit_code == 2
    assert f"{run} was trained with --balance-every 2, not 3" in other.error_lines[0]


def test_a_balanced_run_resumes_with_files_removed(styletx, data, tmp_path):
    """Two training files deleted between the runs: the saved weights drew an example that
    was gone (an IndexError's traceback); now they are estimated again at once."""
    run = tmp_path / "run"
    command = ("train", data["a"], data["b"], "--model", "vaegan", *TINY, "--size", "16",
               "--out", run, "--balance", "--balance-every", "4")
    assert styletx(*command, "--steps", "2").exit_code == 0
    for path in sorted(data["a"].iterdir())[:2]:
        path.unlink()
    resumed = styletx(*command, "--steps", "6")
    assert resumed.exit_code == 0, resumed.stderr
    assert "A: 10 training examples now, 12 at the checkpoint" in resumed.stderr
    assert "A: the --balance weights are estimated again" in resumed.stderr
    steps = [e["step"] for e in map(json.loads, (run / "log.jsonl").read_text().splitlines())
             if "balance" in e]
    assert steps == [0, 2, 4]


def test_balance_share_0_says_that_balance_changes_nothing(caplog, monkeypatch):
    """--balance-share 0 draws every batch uniformly (the benchmarks' control arm): a user who
    set it believing it tunes the balance hears that nothing is balanced."""
    from styletx.engine.training.settings import TrainSettings, check_balance_settings

    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    check_balance_settings(TrainSettings(balance=True, balance_share=0.5))
    assert not caplog.records
    check_balance_settings(TrainSettings(balance=True, balance_share=0.0))
    assert [r.getMessage() for r in caplog.records] == [
        "--balance-share 0: every batch is drawn uniformly, so --balance changes nothing but "
        "the log lines"]


@pytest.mark.parametrize(("every", "start", "total", "said"), [
    (100, 0, 600, None),
    (5000, 0, 600, "--balance-every 5000 is as long as the 600 step(s) left: the sampling "
                   "weights are estimated once, at step 0 (from the untrained model)"),
    (500, 300, 600, "--balance-every 500 is as long as the 300 step(s) left: the sampling "
                    "weights are estimated once, at step 500"),
    (500, 520, 900, "--balance-every 500 is as long as the 380 step(s) left: the sampling "
                    "weights are not re-estimated in this run"),
])
def test_a_balance_period_as_long_as_the_run_is_named(caplog, monkeypatch, every, start,
                                                      total, said):
    """--balance-every 5000 on a 600-step run was accepted in silence: the weights then came
    from one estimate of the untrained model."""
    from styletx.engine.training.loop import _warn_of_few_balance_estimates
    from styletx.engine.training.settings import TrainSettings

    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    _warn_of_few_balance_estimates(TrainSettings(balance=True, balance_every=every), start,
                                   total)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ([] if said is None else [
        said + "; a shorter period follows the model as it learns"])
