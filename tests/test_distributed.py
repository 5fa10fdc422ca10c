"""Training on several processes (torchrun, gloo on CPU): identical weights on every rank,
disjoint data shards, one writer, and a resume with another number of processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from styletx.demo import make_paired_image_dataset
from styletx.engine.data import CropSampler
from styletx.engine.distributed import _free_port

SMALL = {"ngf": 4, "ndf": 4}
STEPS = 6


def _rank_worker(rank: int, world: int, port: int, model: str, a: str, b: str, out: str,
                 dump: str, extra: dict, overrides: dict) -> None:
    """One training process, set up as torchrun would: the environment names its rank. Saves
    its final weights and the examples it drew for the test to compare."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from styletx.engine import training
    from styletx.engine.training import loop

    seen: dict[str, object] = {}
    run_loop, index = loop.run, CropSampler._index
    drawn: list[int] = []

    def spy_loop(prepared, settings):
        seen["translator"] = prepared.translator
        return run_loop(prepared, settings)

    def spy_index(self, side):
        i = index(self, side)
        if side == "a":
            drawn.append(i)
        return i

    loop.run, CropSampler._index = spy_loop, spy_index
    training.train(Path(a), Path(b), Path(out), model=model, preset="tiny", overrides=overrides,
                   settings=training.TrainSettings(**{
                       "steps": STEPS, "size": 16, "batch_size": 2, "device": "cpu",
                       "progress": False, "save_every": 3, "preview_every": STEPS, **extra}))
    networks = seen["translator"].networks()
    torch.save({"weights": {name: net.state_dict() for name, net in networks.items()},
                "drawn": drawn}, Path(dump) / f"rank{rank}.pt")


def _train_on_two_processes(model: str, data: dict[str, Path], tmp_path: Path,
                            overrides: dict = SMALL, **extra) -> list[dict]:
    dump = tmp_path / "dump"
    dump.mkdir()
    mp.spawn(_rank_worker, nprocs=2, args=(2, _free_port(), model, str(data["a"]),
                                           str(data["b"]), str(tmp_path / "run"), str(dump),
                                           extra, overrides))
    return [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _replanning_worker(rank: int, port: int, a: str, b: str, out: str, dump: str) -> None:
    """A --minutes run on two processes whose clocks would revise the plan differently
    (rank 0 to 9 steps, rank 1 to 7) at step 3."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from styletx.engine import training
    from styletx.engine.training import budget, loop

    loop.steps_in_budget = lambda *args: 100  # no timing steps
    budget.Budget.revised_total = lambda self, step, total, now: (
        {0: 9, 1: 7}[rank] if step == 3 else None)
    result = training.train(Path(a), Path(b), Path(out), model="cyclegan", preset="tiny",
                            overrides=SMALL, settings=training.TrainSettings(
                                minutes=60, size=16, batch_size=2, device="cpu",
                                progress=False, preview_every=1000))
    (Path(dump) / f"rank{rank}.json").write_text(json.dumps(result.step))


@pytest.mark.slow
def test_minutes_revise_the_plan_on_every_process_alike(scenes, tmp_path):
    """--minutes under --nproc: the plan is revised as in one process, by rank 0's clock,
    so every process stops at the same step (each by its own would wait for ever)."""
    dump = tmp_path / "dump"
    dump.mkdir()
    mp.spawn(_replanning_worker, nprocs=2, args=(_free_port(), str(scenes["a"]),
                                                 str(scenes["b"]), str(tmp_path / "run"),
                                                 str(dump)))
    assert [json.loads((dump / f"rank{r}.json").read_text()) for r in range(2)] == [9, 9]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["step"] == 9


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    return make_paired_image_dataset(tmp_path_factory.mktemp("paired"), n_train=10, n_test=1,
                                     size=24)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cyclegan", "pix2pix", "vaegan"])
def test_two_processes_keep_identical_weights_and_draw_disjoint_shards(model, scenes, paired,
                                                                       tmp_path):
    data = paired if model == "pix2pix" else scenes
    ranks = _train_on_two_processes(model, data, tmp_path)
    run = tmp_path / "run"
    _assert_same_weights(ranks, run)
    assert json.loads((run / "config.json").read_text())["step"] == STEPS
    # Each epoch (one pass over the examples) is split between the ranks: within an epoch
    # the two ranks draw different examples, and together they cover every example.
    n = len(list(data["a"].iterdir()))
    per_rank = -(-n // 2)
    first = [r["drawn"][:per_rank] for r in ranks]
    if n % 2 == 0:
        assert not set(first[0]) & set(first[1])
    assert set(first[0]) | set(first[1]) == set(range(n))
    # one writer: one checkpoint, each step logged once
    assert sorted(p.name for p in run.iterdir() if p.suffix in (".safetensors", ".pt")) == [
        "model.safetensors", "resume.pt"]
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_match_trains_on_two_processes(tmp_path):
    """The voice matching model through forward_for: one optimizer over its encoders,
    reconstructors and adversaries, identical on both ranks; the matching sets are filled
    after the last step by rank 0 alone, which writes the run."""
    from styletx.audio.synth import write_voice_folders

    voices = write_voice_folders(tmp_path / "voices", n_train=2, n_test=1, seconds=1.0)
    ranks = _train_on_two_processes("match", voices, tmp_path, overrides={})
    run = tmp_path / "run"
    # what finish_training fits after the last step (the sets, the codes' spread) is rank 0's
    ranks[1]["weights"]["E0"]["scale"] = ranks[0]["weights"]["E0"]["scale"]  # tiny: one code
    _assert_same_weights(ranks, run, skip=("M_A", "M_B"))
    assert json.loads((run / "config.json").read_text())["step"] == STEPS
    saved = load_file(run / "model.safetensors")
    assert saved["net.M_A.bank"].shape[0] > 0 and saved["net.E0.scale"].item() != 1.0


def _assert_same_weights(ranks: list[dict], run: Path, skip: tuple[str, ...] = ()) -> None:
    """The ranks' parameters are identical, and the checkpoint holds rank 0's state. Batch
    norm's running statistics (pix2pix on CPU) are each rank's own after its last step, as in
    DistributedDataParallel: each forward starts from rank 0's (broadcast_buffers)."""
    weights = [r["weights"] for r in ranks]
    assert weights[0].keys() == weights[1].keys()
    saved = load_file(run / "model.safetensors")
    for name in set(weights[0]) - set(skip):
        for key, tensor in weights[0][name].items():
            assert torch.equal(saved[f"net.{name}.{key}"], tensor), (name, key)
            if "running_" not in key:
                assert torch.equal(tensor, weights[1][name][key]), (name, key)


@pytest.mark.slow
def test_balance_on_two_processes(scenes, tmp_path):
    """--balance re-weights on every rank from the same (rank 0's) weights: the runs stay in
    step, and the one log records each re-estimate once."""
    ranks = _train_on_two_processes("vaegan", scenes, tmp_path, balance=True, balance_every=2,
                                    prefetch=2)
    _assert_same_weights(ranks, tmp_path / "run")
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [e["step"] for e in map(json.loads, log) if "balance" in e] == [0, 2, 4]


@pytest.mark.slow
def test_minutes_on_two_processes(scenes, tmp_path):
    """--minutes plans one step count for all processes (rank 0's) and stops them together."""
    ranks = _train_on_two_processes("cyclegan", scenes, tmp_path, steps=None, minutes=0.1)
    _assert_same_weights(ranks, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert 1 <= config["step"] <= config["train"]["steps"]


@pytest.mark.slow
def test_nproc_trains_through_torchrun_and_resumes_on_one_process(scenes, tmp_path):
    run = tmp_path / "run"
    base = [sys.executable, "-m", "styletx.cli", "train", str(scenes["a"]), str(scenes["b"]),
            "--preset", "tiny", "--device", "cpu", "--size", "16", "--set", "ngf=4",
            "--set", "ndf=4", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*base, "--steps", "4", "--nproc", "2"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("run folder:") == 1  # only rank 0 reports
    assert sum(line.startswith("A: ") for line in two.stderr.splitlines()) == 1, two.stderr
    assert json.loads((run / "config.json").read_text())["step"] == 4
    one = subprocess.run([*base, "--steps", "7"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert one.returncode == 0, one.stderr
    assert "resuming" in one.stderr and "from step 4" in one.stderr
    assert "(step 7)" in one.stdout
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 7 and steps == sorted(set(steps))


def test_nproc_refuses_to_nest_under_torchrun(styletx, scenes, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sys, "argv", ["styletx", "train", "--nproc", "2"])
    result = styletx("train", scenes["a"], scenes["b"], "--nproc", "2", "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert "already running under torchrun" in result.error_lines[0]
    assert not (tmp_path / "r").exists()


def test_more_processes_than_cores_is_said(styletx, scenes, tmp_path, monkeypatch):
    from styletx.engine import distributed, threads

    monkeypatch.setattr(sys, "argv", ["styletx", "train", "--nproc", "3"])
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    monkeypatch.setattr("cli._has_cuda", lambda: False)  # (GPUs would be the processes' own)
    monkeypatch.setattr(distributed, "launch", lambda args, nproc, env: 0)  # not started here
    result = styletx("train", scenes["a"], scenes["b"], "--nproc", "3", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.stderr
    assert ("Warning: --nproc 3 on 2 CPU core(s): the processes take turns on them, which is "
            "no faster than --nproc 2") in result.stderr


def test_batch_norm_becomes_synchronised_in_place():
    """On GPUs pix2pix's batch norm is swapped for SyncBatchNorm inside each network, keeping
    its weights and statistics and the network object the translator holds."""
    from styletx.engine.distributed import _swap_in_sync_batch_norm
    from styletx.plugins.pix2pix import Pix2Pix, Pix2PixConfig

    model = Pix2Pix(Pix2PixConfig(ngf=4, ndf=4, depth=3), 3, 3)
    for net in model.networks().values():
        before = {k: v.clone() for k, v in net.state_dict().items()}
        kinds = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        _swap_in_sync_batch_norm(net)
        assert kinds > 0
        assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules()) == kinds
        after = net.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.networks()["G_a2b"] is model.generators["a2b"]


@pytest.fixture
def one_process_group():
    """A real (one-process) gloo group, enough to build DistributedDataParallel wrappers in
    the test process; ``Group(0, 2)`` then behaves as rank 0 of a distributed run."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _toy_cyclegan():
    from styletx.plugins.cyclegan import CycleGAN, CycleGANConfig

    model = CycleGAN(CycleGANConfig(ngf=4, ndf=4, n_blocks=1, n_layers_d=2), 3, 3)
    model.configure_optimizers(10)
    return model


def test_each_optimizer_gets_one_ddp_wrapper_over_its_networks(one_process_group):
    from torch.nn.parallel import DistributedDataParallel

    from styletx.engine.distributed import Group

    model = _toy_cyclegan()
    Group(0, 2).distribute(model, torch.device("cpu"))
    wrappers = model.context.wrappers
    assert set(wrappers) == {"G", "D"}
    assert all(isinstance(w, DistributedDataParallel) for w in wrappers.values())
    assert list(wrappers["G"].module.networks) == [model.G_A, model.G_B]
    assert list(wrappers["D"].module.networks) == [model.D_A, model.D_B]
    batch = {side: torch.rand(2, 3, 16, 16) * 2 - 1 for side in "ab"}
    for step in range(2):  # every optimizer step finds its forward pass went through DDP
        assert set(model.training_step(batch, step)) >= {"G_A", "D_A"}


def test_a_translator_bypassing_forward_for_is_stopped_before_its_first_update(
        one_process_group):
    from styletx.contract.errors import UsageError
    from styletx.engine.distributed import Group
    from styletx.plugins.cyclegan import CycleGAN

    model = _toy_cyclegan()
    Group(0, 2).distribute(model, torch.device("cpu"))
    before = [p.clone() for p in model.G_A.parameters()]
    model.forward_for = lambda optimizer, forward, *args: forward(*args)  # what it forgets
    with pytest.raises(UsageError, match=r"stepped its 'G' optimizer without running the "
                                         r"forward pass through forward_for\('G', \.\.\.\)"):
        CycleGAN.training_step(model, {side: torch.rand(1, 3, 16, 16) for side in "ab"}, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.G_A.parameters()))


def test_an_optimizer_over_part_of_a_network_cannot_be_distributed(one_process_group):
    from styletx.contract.errors import UsageError
    from styletx.engine.distributed import Group

    model = _toy_cyclegan()
    model.optimizers["G"] = torch.optim.Adam(list(model.G_A.parameters())[:2])
    with pytest.raises(UsageError, match="'G' optimizer must update whole networks"):
        Group(0, 2).distribute(model, torch.device("cpu"))


def test_frozen_parameters_may_stay_out_of_the_optimizer(one_process_group):
    """DDP averages only trainable parameters: an optimizer over a network's trainable ones
    (here the first layer frozen) is accepted."""
    from styletx.engine.distributed import Group

    model = _toy_cyclegan()
    first, *rest = model.G_A.parameters()
    first.requires_grad_(False)
    model.optimizers["G"] = torch.optim.Adam([*rest, *model.G_B.parameters()])
    Group(0, 2).distribute(model, torch.device("cpu"))
    assert list(model.context.wrappers["G"].module.networks) == [model.G_A, model.G_B]


def test_one_process_under_torchrun_joins_a_process_group(monkeypatch):
    """torchrun --nproc-per-node 1 (one GPU) runs the same DDP job as N processes do, so a
    1-GPU machine exercises NCCL and the DDP wrappers; a plain process stays alone."""
    import torch.distributed as dist

    from styletx.engine import distributed

    assert not distributed.setup("cpu")[0].active
    monkeypatch.setenv("WORLD_SIZE", "1")  # set, but not by torchrun: still alone
    assert not distributed.setup("cpu")[0].active
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    group, device = distributed.setup("cpu")
    try:
        assert group.active and group.size == 1 and device == "cpu"
        assert dist.get_backend() == "gloo"
        flag = group.any(True, torch.device("cpu"))
        assert flag is True
    finally:
        group.finish()
    assert not dist.is_initialized()


def test_finish_frees_the_process_group_before_the_interpreter_exits(tmp_path):
    """A group that outlives destroy_process_group is torn down with the interpreter, where a
    rank could abort after a finished run (SIGABRT, "terminate called without an active
    exception", about 1 two-process run in 80 under load). After finish nothing holds it: not
    the DDP wrappers, nor torch.distributed.nn's functions (their default argument). In a
    fresh process, since the first import of torch.distributed.nn is what matters."""
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        import sys, weakref
        import torch, torch.distributed as dist
        sys.path.insert(0, sys.argv[1])
        from test_distributed import _toy_cyclegan
        from styletx.engine import distributed

        group, _ = distributed.setup("cpu")
        process_group = weakref.ref(dist.group.WORLD)
        model = _toy_cyclegan()
        group.distribute(model, torch.device("cpu"))
        model.training_step({side: torch.rand(2, 3, 16, 16) * 2 - 1 for side in "ab"}, 0)
        group.finish()
        print("initialized", dist.is_initialized(), "wrappers", len(model.context.wrappers),
              "group alive", process_group() is not None)
    """))
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": "1", "RANK": "0",
           "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(probe), str(Path(__file__).parent)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["initialized", "False", "wrappers", "0", "group", "alive",
                                     "False"], result.stdout


@pytest.mark.slow
def test_nproc_from_a_folder_with_another_styletx_checkout(scenes, tmp_path):
    """`styletx train --nproc 2` started in a folder that holds a styletx/ source tree (a
    checkout, not what is installed): the training processes still import the installed
    styletx instead of ending in torchrun's traceback about styletx.cli."""
    decoy = tmp_path / "styletx"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy checkout was imported')\n")
    script = shutil.which("styletx")
    if script is None:
        pytest.skip("the styletx command is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [script, "train", str(scenes["a"]), str(scenes["b"]), "--out", str(tmp_path / "run"),
         "--preset", "tiny", "--steps", "2", "--size", "16", "--device", "cpu", "--nproc", "2"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "decoy" not in result.stderr


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@contextlib.contextmanager
def _nproc_run(base: list[str], env: dict, log: Path) -> Iterator[subprocess.Popen]:
    """``--nproc 2`` in a session of its own (a signal to it reaches no test process), once
    both training processes are past their first logged step; stopped at the end if a failed
    assertion left it training."""
    launcher = subprocess.Popen([*base, "--nproc", "2"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
    try:
        lines = 0 if not log.exists() else len(log.read_text().splitlines())
        for _ in range(1200):
            if log.exists() and len(log.read_text().splitlines()) > lines:
                break
            assert launcher.poll() is None, launcher.communicate()
            time.sleep(0.1)
        yield launcher
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_nproc_stops_every_process_on_a_signal_to_the_launcher_alone(scenes, tmp_path):
    """`kill PID` of `styletx train --nproc 2` (what timeout and an IDE's stop button do):
    every training process stops after its step, rank 0 saves and says so once, and none is
    left training on its own. A second launcher on the busy folder: one line, no traceback.
    A training process killed outright: rank 0 saves the steps since its last checkpoint."""
    run = tmp_path / "run"
    base = [sys.executable, "-m", "styletx.cli", "train", str(scenes["a"]), str(scenes["b"]),
            "--preset", "tiny", "--device", "cpu", "--size", "16", "--set", "ngf=4",
            "--set", "ndf=4", "--out", str(run), "--steps", "100000", "--log-every", "5",
            "--save-every", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with _nproc_run(base, env, run / "log.jsonl") as launcher:
        workers = _children(launcher.pid)
        assert len(workers) == 2
        busy = subprocess.run([*base, "--nproc", "2"], capture_output=True, text=True, env=env,
                              timeout=120)
        assert busy.returncode == 1 and "Traceback" not in busy.stderr, busy.stderr
        assert "another styletx process" in busy.stderr.splitlines()[-1]

        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=120)
        assert launcher.returncode == 143, stderr
        said = [line for line in stderr.splitlines() if "interrupted at step" in line]
        assert len(said) == 1 and said[0].startswith("Error: interrupted at step"), stderr
        assert all(_gone(pid) for pid in workers)
        step = json.loads((run / "config.json").read_text())["step"]
        assert f"at step {step};" in said[0]

    with _nproc_run(base, env, run / "log.jsonl") as launcher:
        os.kill(max(_children(launcher.pid)), signal.SIGKILL)  # rank 1, started second
        _, stderr = launcher.communicate(timeout=120)
        assert launcher.returncode == 128 + signal.SIGKILL and "Traceback" not in stderr, stderr
        assert "Warning: training process 1 was killed by SIGKILL" in stderr
        error = [line for line in stderr.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and error[0].startswith("Error: another training process "
                                                       "stopped in step "), stderr
        saved = json.loads((run / "config.json").read_text())["step"]
        assert saved > step and error[0].endswith(f"a rerun resumes from step {saved}")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(600):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"never {what}")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc and prctl")
def test_nproc_pauses_with_ctrl_z_and_stops_when_its_launcher_is_killed(scenes, tmp_path):
    """Ctrl-Z (SIGTSTP) of `styletx train --nproc 2` pauses the training processes with it and
    `fg` (SIGCONT) continues them; a `kill -9` of the launcher leaves none training on its own:
    each stops after its step and rank 0 saves."""
    run = tmp_path / "run"
    base = [sys.executable, "-m", "styletx.cli", "train", str(scenes["a"]), str(scenes["b"]),
            "--preset", "tiny", "--device", "cpu", "--size", "16", "--set", "ngf=4",
            "--set", "ndf=4", "--out", str(run), "--steps", "100000", "--log-every", "5",
            "--save-every", "100000"]
    with _nproc_run(base, {**os.environ, "OMP_NUM_THREADS": "1"}, run / "log.jsonl") as launcher:
        workers = _children(launcher.pid)
        launcher.send_signal(signal.SIGTSTP)
        _until(lambda: all(_state(pid) == "T" for pid in [launcher.pid, *workers]),
               "paused every process")
        launcher.send_signal(signal.SIGCONT)
        _until(lambda: all(_state(pid) != "T" for pid in [launcher.pid, *workers]),
               "continued every process")
        steps = len((run / "log.jsonl").read_text().splitlines())
        _until(lambda: len((run / "log.jsonl").read_text().splitlines()) > steps,
               "trained on after the pause")

        launcher.kill()
        _, stderr = launcher.communicate(timeout=120)  # the pipes close as the workers end
        _until(lambda: all(_gone(pid) for pid in workers), "ended the orphaned workers")
        said = [line for line in stderr.splitlines() if "interrupted at step" in line]
        assert len(said) == 1, stderr
        step = json.loads((run / "config.json").read_text())["step"]
        assert step > 0 and f"at step {step};" in said[0]


def test_a_signal_while_the_processes_start_stops_the_ones_started(monkeypatch):
    """`--nproc 4` stopped while its processes start: the rest are not started (those started
    would wait for them for ever), the started ones are killed (no step was taken), and the
    status is the signal's."""
    from styletx.engine import distributed

    started = []

    class Process:
        pid, returncode = 0, None

        def __init__(self, *args, **kwargs):
            started.append(self)
            if len(started) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # the launcher's handler forwards it

        def poll(self):
            return self.returncode

        def send_signal(self, number):
            self.returncode = -number

        kill = lambda self: self.send_signal(signal.SIGKILL)  # noqa: E731

    monkeypatch.setattr(distributed.subprocess, "Popen", Process)
    handler = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a command's process
    try:
        assert distributed.launch(["train"], 4, {}) == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back by the launcher
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert len(started) == 2 and [p.returncode for p in started] == [-signal.SIGTERM,
                                                                     -signal.SIGKILL]


def test_a_closed_terminal_stops_the_processes_as_sigterm_does(monkeypatch):
    """SIGHUP to the launcher (its terminal closed) reaches each training process once, as
    SIGTERM (which training takes as "save and stop"); their status is the launcher's."""
    from styletx.engine import distributed

    started, signals, hung_up = [], [], []

    class Process:
        pid, returncode = 0, None

        def __init__(self, *args, **kwargs):
            started.append(self)

        def poll(self):
            if len(started) == 2 and not hung_up:
                hung_up.append(True)
                os.kill(os.getpid(), signal.SIGHUP)
            hung_up.append(True)
            assert len(hung_up) < 10_000, "the launcher never forwarded the signal"
            return self.returncode

        def send_signal(self, number):
            signals.append(number)
            self.returncode = 128 + number  # as training exits on it

    monkeypatch.setattr(distributed.subprocess, "Popen", Process)
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a test runner's worker ignores it
    try:
        assert distributed.launch(["train"], 2, {}) == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert signals == [signal.SIGTERM, signal.SIGTERM]


def test_processes_killed_by_a_forwarded_signal_as_they_start_give_its_status(monkeypatch,
                                                                           caplog):
    """A SIGTERM to the launcher while its processes read the data (before their handlers)
    killed them: the status was exit(-15), 241, and nothing was said."""
    from styletx.engine import distributed

    started, sent = [], []

    class Process:
        pid, returncode = 0, None

        def __init__(self, *args, **kwargs):
            started.append(self)

        def poll(self):
            if len(started) == 2 and not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGTERM)  # forwarded: both die of it at once
            return self.returncode

        def send_signal(self, number):
            self.returncode = -number

        kill = lambda self: self.send_signal(signal.SIGKILL)  # noqa: E731

    monkeypatch.setattr(distributed.subprocess, "Popen", Process)
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    handler = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with caplog.at_level(logging.WARNING, logger="styletx"):
            assert distributed.launch(["train"], 2, {}) == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert "the training processes were stopped by SIGTERM before training began" in caplog.text


def test_only_rank_0_probes_the_run_folder_and_others_ignore_its_probe(tmp_path, monkeypatch):
    """Every --nproc process wrote and removed RUN/.styletx-write-check: one removed the
    other's (a traceback), or saw it and called the new folder a stranger's."""
    from styletx.contract.files import WRITE_CHECK

    prepare = sys.modules["styletx.engine.training.prepare"]
    run = tmp_path / "run"
    run.mkdir()
    (run / WRITE_CHECK).write_bytes(b"")  # rank 0's, at this moment
    (run / f".{WRITE_CHECK}.tmp-1-2").write_bytes(b"")
    assert prepare.saved_config(run) is None  # a new run, not "not a styletx run"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(prepare, "check_writable", None)  # would fail if called
    prepare._check_writable(run)
