"""Training end to end: the run folder, resume, and learning a transform with a known answer."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from styletx.contract.errors import StyletxError, UsageError
from styletx.demo import score_folder
from styletx.engine.runs import load_resume
from styletx.engine.training import TrainingInterrupted, TrainSettings, train
from styletx.plugins.cyclegan import CycleGAN


def settings(steps: int, **kw) -> TrainSettings:
    base = dict(steps=steps, size=16, batch_size=2, device="cpu", progress=False,
                save_every=1000, preview_every=1000, log_every=1)
    return TrainSettings(**{**base, **kw})


def test_run_folder_contents(scenes, tmp_path):
    run = tmp_path / "run"
    result = train(scenes["a"], scenes["b"], run, preset="tiny", settings=settings(3))
    assert result.step == 3
    config = json.loads((run / "config.json").read_text())
    assert config["translator"] == "cyclegan" and config["step"] == 3
    assert config["encoders"]["a"]["name"] == "rgb" and config["train"]["size"] == 16
    weights = load_file(run / "model.safetensors")
    assert any(k.startswith("net.G_A.") for k in weights)
    state = load_resume(run)  # weights_only=True: no code can run from the file
    assert state["step"] == 3 and set(state["optimizers"]) == set(state["schedulers"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and "G_A" in log[-1]["losses"]
    assert (run / "samples" / "step-000003.png").is_file()
    assert not list(run.glob(".*tmp*"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_after_interruption_gives_identical_weights(scenes, tmp_path, monkeypatch,
                                                           prefetch):
    """2N uninterrupted steps == N steps, Ctrl-C, then the same command again (bit-exact on CPU:
    optimizer, scheduler, image pools, torch RNG and the data sampler are all restored). With
    batches drawn ahead (--prefetch 3) the checkpoint still records the batches consumed, so
    the result is the same as without."""
    n = 5  # Ctrl-C arrives during step n - 1, so the run stops and saves after n steps
    straight = train(scenes["a"], scenes["b"], tmp_path / "straight", preset="tiny",
                     settings=settings(2 * n))

    original = CycleGAN.training_step

    def interrupt_at_n(self, batch, step):
        if step == n - 1:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, mid-step
        return original(self, batch, step)

    monkeypatch.setattr(CycleGAN, "training_step", interrupt_at_n)
    with pytest.raises(TrainingInterrupted, match=f"step {n}"):
        train(scenes["a"], scenes["b"], tmp_path / "resumed", preset="tiny",
              settings=settings(2 * n, prefetch=prefetch))
    assert load_resume(tmp_path / "resumed")["step"] == n
    monkeypatch.setattr(CycleGAN, "training_step", original)
    resumed = train(scenes["a"], scenes["b"], tmp_path / "resumed",
                    settings=settings(2 * n, prefetch=prefetch))

    assert resumed.step == straight.step == 2 * n
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = load_resume(tmp_path / "straight"), load_resume(tmp_path / "resumed")
    assert sa["schedulers"] == sb["schedulers"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "log.jsonl").open()]
    assert steps == list(range(1, 2 * n + 1))  # no duplicated log lines after resume


def test_what_is_fitted_after_training_is_fitted_at_the_end_and_saved(scenes, tmp_path,
                                                                       monkeypatch):
    """``Translator.finish_training`` (the voice post-filter's fit) runs once, after the last
    step and before its checkpoint, which keeps what it fitted; a run stopped early by Ctrl-C
    does not run it, the resumed run does."""
    calls = []

    def finish_training(self, examples):
        calls.append(sorted(examples))
        with torch.no_grad():
            self.G_A.body[0].bias.fill_(7.0)  # stands for what it fits

    original = CycleGAN.training_step

    def interrupt_at_2(self, batch, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, step)

    monkeypatch.setattr(CycleGAN, "finish_training", finish_training)
    monkeypatch.setattr(CycleGAN, "training_step", interrupt_at_2)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="step 2"):
        try:  # a user's loop over settings that goes on past a failed run
            train(scenes["a"], scenes["b"], run, preset="tiny", settings=settings(4))
        except Exception:  # noqa: BLE001 -- Ctrl-C must get through it and stop the loop
            pytest.fail("Ctrl-C was caught as an Exception")
    assert calls == []
    monkeypatch.setattr(CycleGAN, "training_step", original)
    assert train(scenes["a"], scenes["b"], run, settings=settings(4)).step == 4
    assert calls == [["a", "b"]]
    saved = load_file(run / "model.safetensors")
    assert torch.all(saved["net.G_A.body.0.bias"] == 7.0)


def test_a_failure_fitting_after_training_costs_no_step(scenes, tmp_path, monkeypatch,
                                                       caplog):
    """An exception from ``finish_training`` is a warning: the last steps are saved."""
    def finish_training(self, examples):
        raise RuntimeError("out of memory fitting the post-filter")

    monkeypatch.setattr(CycleGAN, "finish_training", finish_training)
    # the CLI's tests turn the styletx logger's propagation off; caplog listens at the root
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    with caplog.at_level("WARNING", logger="styletx"):
        result = train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny",
                       settings=settings(3))
    assert result.step == 3 and load_resume(tmp_path / "run")["step"] == 3
    assert ("cyclegan: fitting after training failed (RuntimeError: out of memory fitting the "
            "post-filter); the run is saved without it") in caplog.text


def test_resume_refuses_contradicting_options(scenes, tmp_path):
    from styletx.contract.errors import UsageError

    train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny", settings=settings(2))
    with pytest.raises(UsageError, match="--size 16, not 24"):
        train(scenes["a"], scenes["b"], tmp_path / "run", settings=settings(4, size=24))


def test_finished_run_is_not_retrained(scenes, tmp_path, caplog, monkeypatch):
    train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny", settings=settings(2))
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    # the CLI's tests turn the styletx logger's propagation off; caplog listens at the root
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="styletx"):
        result = train(scenes["a"], scenes["b"], tmp_path / "run", settings=settings(2))
        assert "already trained to step 2 of 2; raise --steps" in caplog.text
        assert train(scenes["a"], scenes["b"], tmp_path / "run", settings=settings(1)).step == 2
        assert "already trained to step 2, past the 1 asked" in caplog.text
    assert result.step == 2
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_raising_steps_on_a_finished_run_trains_at_the_new_schedules_rate(scenes, tmp_path):
    """A finished run ends at lr 0. Raised from 2 to 4 steps, the schedule is the new total's
    (the full rate for the first half, then linear to 0), so steps 3 and 4 run at the full and
    at half the rate, not at the 0 the optimizer was saved with; the log shows the rate each
    step ran at."""
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=settings(2))
    base = json.loads((run / "config.json").read_text())["config"]["lr"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["lr"]["G"] for r in log] == [base, base]  # the first half at the full rate
    assert load_resume(run)["optimizers"]["G"]["param_groups"][0]["lr"] == 0.0
    before = load_file(run / "model.safetensors")
    train(scenes["a"], scenes["b"], run, settings=settings(4))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]["G"]) for r in log[2:]] == [(3, base), (4, base / 2)]
    after = load_file(run / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("net.G_A."))


def test_a_run_whose_weights_are_lost_is_not_started_over(scenes, tmp_path):
    """model.safetensors deleted and no .previous/ (a run that saved once): its config.json
    records step 2, so training refuses rather than start at step 1 over its resume state."""
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=settings(2))
    assert not (run / ".previous").exists()
    (run / "model.safetensors").unlink()
    resume = (run / "resume.pt").read_bytes()
    with pytest.raises(StyletxError, match=r"model.safetensors: the weights file is missing and "
                       r"no earlier checkpoint is in .previous/, so the run's step 2 cannot be "
                       r"resumed; restore the file, or train into a new --out"):
        train(scenes["a"], scenes["b"], run, settings=settings(4))
    assert (run / "resume.pt").read_bytes() == resume


def test_crash_between_weights_and_resume_state_still_resumes(scenes, tmp_path, monkeypatch):
    """A kill after resume.pt was renamed into place but before model.safetensors was: the run
    resumes from the previous matching pair (in .previous/) instead of refusing."""
    import styletx.engine.runs as runs

    train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny", settings=settings(2))
    real_replace = os.replace

    def die_before_the_weights(src, dst):
        if str(dst).endswith("model.safetensors"):
            raise KeyboardInterrupt  # as if killed right here
        real_replace(src, dst)

    monkeypatch.setattr(runs.os, "replace", die_before_the_weights)
    with pytest.raises(KeyboardInterrupt):
        train(scenes["a"], scenes["b"], tmp_path / "run", settings=settings(4, save_every=1))
    monkeypatch.setattr(runs.os, "replace", real_replace)
    assert load_resume(tmp_path / "run")["step"] == 3  # beside the weights of step 2
    result = train(scenes["a"], scenes["b"], tmp_path / "run", settings=settings(4))
    assert result.step == 4
    assert load_resume(tmp_path / "run")["step"] == 4


def test_resume_survives_a_log_line_cut_short(scenes, tmp_path):
    train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny", settings=settings(2))
    with open(tmp_path / "run" / "log.jsonl", "a") as f:
        f.write('{"step": 3, "los')
    assert train(scenes["a"], scenes["b"], tmp_path / "run", settings=settings(3)).step == 3


def test_crash_while_saving_keeps_previous_checkpoint(scenes, tmp_path, monkeypatch):
    import styletx.engine.runs as runs

    train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny", settings=settings(2))
    before = (tmp_path / "run" / "model.safetensors").read_bytes()

    def crash(path, tensors, metadata):
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(runs, "_write_weights", crash)
    with pytest.raises(StyletxError, match="safetensors: disk full; training stopped at step 4"):
        train(scenes["a"], scenes["b"], tmp_path / "run", settings=settings(4))
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    assert not list((tmp_path / "run").glob(".*tmp*"))


@pytest.mark.slow
def test_tiny_cyclegan_learns_the_hidden_colour_transform(tmp_path):
    """B is A under a fixed colour transform; trained on disjoint unpaired halves, held-out
    conversions must be closer to the true answers than the untouched inputs are.
    Measured: +4.0, +4.3 and +4.9 dB over the untouched inputs for data seeds 1, 2 and 3
    (15.2 -> 19.2 dB for seed 1); the threshold leaves 1 dB of room."""
    from styletx.demo import make_image_dataset
    from styletx.engine.convert import load_run

    data = make_image_dataset(tmp_path / "data", n_train=32, n_test=6, size=48, seed=1)
    train(data["a"], data["b"], tmp_path / "run", preset="tiny",
          settings=settings(300, size=32, batch_size=4, log_every=50))
    load_run(tmp_path / "run", device="cpu").convert_files([data["test_a"]], tmp_path / "out")
    before, after = score_folder(tmp_path / "out", data["test_a"], data["test_b"])
    print(f"PSNR untouched {before:.2f} dB, converted {after:.2f} dB")
    assert after > before + 3.0


def test_channels_last_trains_the_same_model(scenes, tmp_path):
    """The memory format changes how tensors are laid out, not what is computed: the same
    losses on the first steps (weights are not compared: Adam turns rounding-size differences
    in near-zero gradients into lr-size steps)."""
    losses = []
    for name, nhwc in (("plain", False), ("nhwc", True)):
        train(scenes["a"], scenes["b"], tmp_path / name, preset="tiny",
              settings=settings(2, channels_last=nhwc))
        log = (tmp_path / name / "log.jsonl").read_text().splitlines()
        losses.append([json.loads(line)["losses"] for line in log])
    for plain, nhwc in zip(*losses):
        assert plain.keys() == nhwc.keys()
        for key in plain:
            assert nhwc[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-5), key


def test_compile_compiles_the_generators_only(scenes, tmp_path, monkeypatch):
    """--compile compiles the generators in place (names and checkpoints unchanged). The real
    torch.compile takes over a minute per shape on 2 CPU cores, so it is recorded here; it was
    run by hand (tiny CycleGAN, one step: 85 s, then the usual losses)."""
    compiled, modes, marks = [], set(), []
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda net, mode: (compiled.append(net), modes.add(mode)))
    # CUDA graphs (--compile on CUDA) reuse a step's buffers once the next step is marked
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    seen = {}
    original = CycleGAN.configure_optimizers

    def spy(self, total_steps):
        seen["model"] = self
        return original(self, total_steps)

    monkeypatch.setattr(CycleGAN, "configure_optimizers", spy)
    train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny",
          settings=settings(2, compile=True))
    model = seen["model"]
    assert compiled == [model.G_A, model.G_B]
    assert modes == {"default"} and len(marks) == 2  # auto: CUDA graphs on CUDA only
    from styletx.plugins.pix2pix import Pix2Pix, Pix2PixConfig

    paired = Pix2Pix(Pix2PixConfig(ngf=4, ndf=4, depth=3, direction="both"), 3, 3)
    assert sorted(paired.generator_networks()) == ["G_a2b", "G_b2a"]


def test_compile_mode_on_each_device_and_a_bad_one(scenes, tmp_path):
    from styletx.engine.training.loop import COMPILE_MODE_ON_CUDA, compile_mode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode(TrainSettings(compile=True), cpu) == "default"
    assert compile_mode(TrainSettings(compile=True), cuda) == COMPILE_MODE_ON_CUDA
    assert compile_mode(TrainSettings(compile=True, compile_mode="max-autotune"),
                        cuda) == "max-autotune"
    with pytest.raises(UsageError, match="--compile-mode must be one of"):
        train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny",
              settings=settings(1, compile=True, compile_mode="fastest"))



def test_progress_lines_follow_the_clock_not_the_log_period(scenes, tmp_path, monkeypatch,
                                                            caplog):
    """Without a bar, a progress line was written only at logged steps: a slow voice run
    logging every 25 steps printed one a minute. It follows progress.LINE_SECONDS now."""
    monkeypatch.setattr("styletx.engine.progress.LINE_SECONDS", 0.0)
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="styletx"):
        train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny",
              settings=settings(4, log_every=1000))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]


def test_reading_the_training_files_prints_progress_lines_without_a_bar(scenes, tmp_path,
                                                                        monkeypatch, caplog):
    """Reading 20,000 files a side took 48 s of silence where stderr was no terminal (a scale
    trial, under nohup): the bar was the only sign of it. Plain lines now, as training's."""
    monkeypatch.setattr("styletx.engine.progress.LINE_SECONDS", 0.0)
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="styletx"):
        train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny", settings=settings(1))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reading ")]
    files = len(list(scenes["a"].iterdir()))
    assert lines and all(" file(s) (" in line for line in lines)
    assert f"1/{files} file(s)" in lines[0]


def test_a_progress_line_shows_the_mean_losses_since_the_last(scenes, tmp_path, monkeypatch,
                                                              caplog):
    """It showed the last step's losses, which jump about: a trial read 0.69 in a stretch
    whose steps were near 0.17, and took the first step after a resume for a broken one."""
    original = CycleGAN.training_step

    def alternating(self, batch, step):
        original(self, batch, step)
        return {"x": float(step % 2)}

    monkeypatch.setattr(CycleGAN, "training_step", alternating)
    monkeypatch.setattr("styletx.engine.progress.LINE_SECONDS", 1e9)  # the first, the last
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="styletx"):
        train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny", settings=settings(4))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split("  (")[0] for line in lines] == ["step 1/4  x 0.000",  # step 1
                                                        "step 4/4  x 0.667"]  # 1, 0, 1


def test_a_terminal_of_no_width_gets_plain_progress_lines(monkeypatch):
    """Some container ptys report 0 columns, where tqdm draws a bar of nothing and a run
    looks frozen: there the bar is off, so that the plain progress lines are written."""
    import fcntl
    import struct
    import sys
    import termios

    from styletx.engine.progress import progress_bar

    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 0, 0, 0))
            assert progress_bar(total=3).disable
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            bar = progress_bar(total=3)
            assert not bar.disable
            bar.close()
            assert progress_bar(total=3, enabled=False).disable
    finally:
        os.close(slave)
        os.close(master)
