"""Fault injection: no fault may lose a run, and every failure is one clear line.

Sequences of faults, not single ones (DESIGN.md, section 11): real ``kill -9`` of training
processes at each point of a save, two and three saves in a row; damaged run-folder files; two
trainers on one folder; plugins that raise, exit or hang at import. The figures are in
docs/reliability.md. Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY
from safetensors.torch import load_file
from test_plugins import GOOD

from styletx.cli import cli
from styletx.contract.errors import StyletxError, UsageError
from styletx.contract.registry import Registry
from styletx.engine import runs
from styletx.engine.training import TrainSettings, train

pytestmark = pytest.mark.faults

STEPS = 5
CLI_ARGS = ("--preset", "tiny", "--size", "16", "--device", "cpu", "--steps", str(STEPS),
            "--save-every", "1", "--log-every", "1", "--workers", "0", "--batch-size", "2")

# Runs the CLI in a fresh process and kill -9s it at one point of the save of one step. The
# points are where a save can be cut: inside either file, while .previous/ is being replaced
# (its old copy already gone), between the renames of the pair, and before config.json.
KILLER = '''
import os, signal, sys
from pathlib import Path
from styletx.engine import runs
from styletx.engine.training import checkpoints as training

step_to_kill, point = os.environ["KILL_AT"].split(":")
saving = {"step": None, "renames": 0}

def armed(where):
    return saving["step"] == int(step_to_kill) and point == where

def die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

real_save = training.save_checkpoint
def save_checkpoint(run, tensors, state, step):
    saving.update(step=step, renames=0)
    real_save(run, tensors, state, step)
training.save_checkpoint = save_checkpoint

real_fsync = getattr(runs, "_fsync", None)  # (absent before issue 15)
def fsync(path):
    for prefix, where in ((".resume.tmp", "mid-resume"), (".model.tmp", "mid-weights")):
        if path.name.startswith(prefix) and armed(where):
            os.truncate(path, path.stat().st_size // 2)  # half of it reached the disk
            die()
    if path.name.startswith(".model.tmp") and armed("disk-full"):
        import errno
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    real_fsync(path)
if real_fsync:
    runs._fsync = fsync

real_replace = os.replace
def replace(src, dst):
    name = Path(dst).name
    if name in (runs.WEIGHTS, runs.RESUME):
        saving["renames"] += 1
    if ((name == runs.PREVIOUS and armed("mid-rotation"))
            or (saving["renames"] == 2 and armed("between-renames"))
            or (name == runs.CONFIG and armed("before-config"))):
        die()
    real_replace(src, dst)
os.replace = replace

from styletx.cli import cli
cli(sys.argv[1:], prog_name="styletx")
'''


def _train_process(scenes, run: Path, tmp_path: Path, kill_at: str | None = None):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": kill_at or "0:none"}
    return subprocess.run(
        [sys.executable, str(script), "train", str(scenes["a"]), str(scenes["b"]), "--out",
         str(run), *CLI_ARGS], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def straight(scenes, tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    tmp = tmp_path_factory.mktemp("straight")
    done = _train_process(scenes, tmp / "run", tmp)
    assert done.returncode == 0, done.stderr
    return tmp / "run"


def _assert_same_run(run: Path, reference: Path) -> None:
    a, b = load_file(run / runs.WEIGHTS), load_file(reference / runs.WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = runs.load_resume(run), runs.load_resume(reference)
    _assert_equal_state(sa, sb)
    steps = [json.loads(line)["step"] for line in (run / runs.LOG).read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # nothing lost, nothing twice


def _assert_equal_state(a, b, where="state") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _survive(scenes, run, tmp_path, kills: list[tuple[int, str, int]]) -> None:
    """Kill a training process at each (step, point) in turn; after each kill the run must
    hold a whole checkpoint of ``expected`` (the last step whose save completed), and the
    next process must resume from it."""
    resumes_from = 0
    for step, point, expected in kills:
        killed = _train_process(scenes, run, tmp_path, f"{step}:{point}")
        assert killed.returncode == -signal.SIGKILL, (step, point, killed.stderr)
        if resumes_from:
            assert f"resuming {run} from step {resumes_from}" in killed.stderr
        if expected:
            assert runs.load_checkpoint(run)[1]["step"] == expected, (step, point)
        else:  # the first save was cut: no checkpoint, the next process starts afresh
            assert not (run / runs.WEIGHTS).exists()
        resumes_from = expected
    finished = _train_process(scenes, run, tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert f"from step {resumes_from}" in finished.stderr or not resumes_from
    assert not list(run.rglob(".*tmp-*"))  # what the kills left half-written is cleaned up


def test_a_disk_full_twice_in_a_row_loses_nothing(scenes, straight, tmp_path):
    """The disk fills up during the save of step 3, and again during the next attempt's save:
    each time training stops with one line naming the step a rerun resumes from, the last
    whole checkpoint (step 2) stays, and a third run finishes with the uninterrupted weights."""
    run = tmp_path / "run"
    for attempt in range(2):
        full = _train_process(scenes, run, tmp_path, "3:disk-full")
        assert full.returncode == 1, full.stderr
        errors = [line for line in full.stderr.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "the disk is full" in errors[0], full.stderr
        assert "a rerun resumes from step 2" in errors[0]
        assert runs.load_checkpoint(run)[1]["step"] == 2
        if attempt:
            assert f"resuming {run} from step 2" in full.stderr
    finished = _train_process(scenes, run, tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert not list(run.rglob(".*tmp-*"))
    _assert_same_run(run, straight)


@pytest.mark.parametrize("name", [runs.CONFIG, runs.LOG])
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_config_or_log_is_one_line_or_harmless(styletx, scenes, tmp_path, name, how):
    """A byte flipped in (or the end cut off) config.json stops a resume with one line naming
    the file; the same in log.jsonl, which nothing reads back, never stops training."""
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=_settings(2))
    _damage(run / name, how)
    result = styletx("train", scenes["a"], scenes["b"], "--out", run, *CLI_ARGS[:6],
                     "--steps", "3", "--workers", "0", "--batch-size", "2")
    if name == runs.LOG:
        assert result.exit_code == 0, result.stderr
        assert json.loads((run / runs.CONFIG).read_text())["step"] == 3
        return
    if result.exit_code == 0:  # a flip that still parses (a digit, a letter in a string)
        assert json.loads((run / runs.CONFIG).read_text())["step"] == 3
        return
    assert result.exit_code in (1, 2) and len(result.error_lines) == 1, result.stderr
    assert str(run / runs.CONFIG) in result.error_lines[0] or str(run) in result.error_lines[0]
    assert "Traceback" not in result.stderr


def test_kill_during_two_consecutive_saves(scenes, straight, tmp_path):
    """The defect of issue 15: two saves cut between the renames of the pair in a row."""
    run = tmp_path / "run"
    _survive(scenes, run, tmp_path, [(2, "between-renames", 1), (2, "between-renames", 1)])
    _assert_same_run(run, straight)


def test_kill_during_three_consecutive_saves_at_every_point(scenes, straight, tmp_path):
    """The first save killed; three consecutive saves killed (steps 3, 3, 3); then every other
    point of a save."""
    run = tmp_path / "run"
    _survive(scenes, run, tmp_path, [
        (1, "between-renames", 0),  # no checkpoint yet: starts afresh (its log line dropped)
        (2, "before-config", 2),  # the pair is whole; config.json still says step 1
        (3, "between-renames", 2), (3, "mid-weights", 2), (3, "between-renames", 2),
        (4, "mid-rotation", 3),  # .previous/ removed, its replacement not yet renamed
        (5, "mid-resume", 4),
    ])
    _assert_same_run(run, straight)


# -- damaged files ---------------------------------------------------------------------------

def _settings(steps: int, **kw) -> TrainSettings:
    return TrainSettings(**{**dict(steps=steps, size=16, batch_size=2, device="cpu",
                                   progress=False, save_every=1, log_every=1, workers=0), **kw})


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one bit, far from the header: only a checksum can notice it
        data[len(data) * 3 // 4] ^= 0x10
        path.write_bytes(data)


@pytest.mark.parametrize("name", [runs.WEIGHTS, runs.RESUME])
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(scenes, tmp_path, caplog, name,
                                                           how, monkeypatch):
    # the CLI's tests turn the styletx logger's propagation off; caplog listens at the root
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=_settings(2))
    _damage(run / name, how)
    caplog.clear()  # (training's own warnings)
    with caplog.at_level("WARNING", logger="styletx"):
        tensors, state = runs.load_checkpoint(run)
    assert state["step"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert str(run) in warnings[0] and "previous checkpoint (step 1)" in warnings[0]
    assert train(scenes["a"], scenes["b"], run, settings=_settings(3)).step == 3
    assert runs.load_checkpoint(run)[1]["step"] == 3



@pytest.mark.parametrize("saves", [1, 2])
def test_a_failed_rename_of_the_weights_leaves_the_pair_that_was_there(tmp_path, monkeypatch,
                                                                       saves):
    """The new resume.pt was in place when the weights' rename failed (an immutable file, an
    I/O error): the run then held a mismatched pair, and every load warned and fell back to
    .previous/. Now the resume state of the weights still there is put back (none after a
    failed first save)."""
    tensors = {"net.G.w": torch.ones(3)}
    for step in range(1, saves):
        runs.save_checkpoint(tmp_path, tensors, {"step": step}, step)

    def refuse(src, dst):
        if Path(dst).name == runs.WEIGHTS:
            raise PermissionError(1, "Operation not permitted", str(dst))
        real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(runs.os, "replace", refuse)
    with pytest.raises(StyletxError, match="Operation not permitted|permission"):
        runs.save_checkpoint(tmp_path, {"net.G.w": torch.zeros(3)}, {"step": saves}, saves)
    monkeypatch.setattr(runs.os, "replace", real_replace)
    if saves == 1:
        assert not (tmp_path / runs.RESUME).exists() and not (tmp_path / runs.WEIGHTS).exists()
    else:
        assert runs._pair_problem(tmp_path) is None  # whole as it was, with no fallback
        assert runs.load_checkpoint(tmp_path)[1]["step"] == saves - 1
    assert not list(tmp_path.glob(".*tmp-*"))


@pytest.mark.parametrize("lost", [(runs.WEIGHTS,), (runs.WEIGHTS, runs.RESUME)])
def test_a_lost_weights_file_is_never_a_new_run(styletx, scenes, tmp_path, lost):
    """A run folder without model.safetensors was taken for a new run: training started at
    step 1 and its saves replaced .previous/, the last good checkpoint (a trial lost 400
    steps so). It resumes from .previous/ now, and convert uses it, both with a warning."""
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=_settings(2))
    for name in lost:
        (run / name).unlink()
    converted = styletx("convert", run, scenes["test_a"], "-o", tmp_path / "out")
    assert converted.exit_code == 0, converted.stderr
    assert "weights file is missing" in converted.stderr
    assert "using the previous checkpoint (step 1)" in converted.stderr
    resumed = styletx("train", scenes["a"], scenes["b"], "--out", run,
                      *CLI_ARGS[:6], "--steps", "3", *CLI_ARGS[8:])
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming from the previous checkpoint (step 1)" in resumed.stderr
    steps = [json.loads(line)["step"] for line in (run / runs.LOG).read_text().splitlines()]
    assert steps == [1, 2, 3]

def test_both_checkpoints_damaged_is_one_line(styletx, scenes, tmp_path):
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=_settings(2))
    _damage(run / runs.WEIGHTS, "flip")
    _damage(run / runs.PREVIOUS / runs.RESUME, "truncate")
    result = styletx("train", scenes["a"], scenes["b"], "--out", run, *TINY, "--steps", "3")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.error_lines == [result.stderr.strip()]
    assert "checksum" in result.stderr and "not usable either" in result.stderr


def test_hostile_resume_state_is_refused_in_one_line(tmp_path):
    """A resume.pt that would run code when unpickled: refused, without torch's advice to
    load it with weights_only=False."""

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    torch.save({"step": 1, "x": Exploit()}, tmp_path / runs.RESUME)
    with pytest.raises(StyletxError) as caught:
        runs.load_resume(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "weights_only" not in message and "refused" in message
    assert not (tmp_path / "pwned").exists()


def test_unreadable_weights_are_not_called_corrupt(tmp_path, monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    (tmp_path / runs.WEIGHTS).write_bytes(b"x")
    monkeypatch.setattr(runs, "load_file", refuse)
    with pytest.raises(StyletxError, match="cannot read the weights file .Permission denied.$"):
        runs.load_weights(tmp_path)


def test_weights_that_do_not_fit_the_config_are_one_line(styletx, scenes, tmp_path):
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=_settings(1))
    config = json.loads((run / runs.CONFIG).read_text())
    config["config"]["ngf"] *= 2
    (run / runs.CONFIG).write_text(json.dumps(config))
    result = styletx("train", scenes["a"], scenes["b"], "--out", run, "--steps", "2",
                     "--device", "cpu")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "does not match" in result.stderr
    converted = styletx("convert", run, scenes["a"], "-o", tmp_path / "out")  # convert too
    assert converted.exit_code == 1
    assert converted.stderr.count("\n") == 1 and "does not match" in converted.stderr


def test_safetensors_follows_the_umask(scenes, tmp_path):
    old = os.umask(0o027)
    try:
        train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny", settings=_settings(1))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()
             if p.is_file() and p.name != ".lock"}
    assert modes[runs.WEIGHTS] == modes[runs.CONFIG] == modes[runs.RESUME] == 0o640, modes


def test_a_different_seed_on_resume_is_a_usage_error(scenes, tmp_path):
    train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny", settings=_settings(1,
                                                                                    seed=3))
    with pytest.raises(UsageError, match="trained with --seed 3, not 4"):
        train(scenes["a"], scenes["b"], tmp_path / "run", settings=_settings(2, seed=4))
    assert train(scenes["a"], scenes["b"], tmp_path / "run", settings=_settings(2, seed=3)).step


# -- stale temporary files -------------------------------------------------------------------

def test_stale_temporary_files_of_dead_processes_are_removed(scenes, tmp_path):
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=_settings(1))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    alive = str(os.getppid())
    stale = [run / f".model.tmp-{dead}.safetensors", run / f".resume.tmp-{dead}.pt",
             run / runs.SAMPLES / f".step-000002.tmp-{dead}.png"]
    kept = [run / f".resume.tmp-{alive}.pt", run / "notes.tmp-1.txt"]
    for path in stale + kept:
        path.write_bytes(b"\0" * 1000)
    (run / f".previous.tmp-{dead}").mkdir()
    (run / f".previous.tmp-{dead}" / runs.WEIGHTS).write_bytes(b"\0")
    train(scenes["a"], scenes["b"], run, settings=_settings(2))
    assert not any(p.exists() for p in stale) and not (run / f".previous.tmp-{dead}").exists()
    assert all(p.exists() for p in kept)



def test_convert_and_export_remove_what_a_kill_left_of_their_outputs(styletx, scenes, tmp_path):
    """A kill -9 mid-write leaves atomic_path's temporary (no ``finally`` runs); a rerun left it
    for good. Now it removes those of the files it writes, and no one else's."""
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=_settings(1))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    name = sorted(scenes["test_a"].iterdir())[0].stem
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / f".{name}.tmp-{dead}.png", tmp_path / f".model.tmp-{dead}.onnx"]
    kept = [out / f".holiday.tmp-{dead}.png", out / f".{name}.tmp-{os.getppid()}.png"]
    for path in stale + kept:
        path.write_bytes(b"\0" * 100)
    assert styletx("convert", run, scenes["test_a"], "-o", out).exit_code == 0
    assert styletx("export", run, "-o", tmp_path / "model.onnx").exit_code == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)

# -- two trainers on one folder --------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)  # as styletx does: a longer PID of the last holder must not show
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_trainer_on_the_same_folder_is_refused(styletx, scenes, tmp_path):
    run = tmp_path / "run"
    train(scenes["a"], scenes["b"], run, preset="tiny", settings=_settings(1))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        result = styletx("train", scenes["a"], scenes["b"], "--out", run, "--steps", "3",
                         "--device", "cpu")
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1
    assert result.error_lines == [
        f"Error: {run}: another styletx process (PID {holder.pid}) is training in this run "
        "folder; wait for it to finish or use another --out"]
    assert result.stderr.count("\n") == 1
    assert {p.name: p.read_bytes() for p in run.iterdir()
            if p.is_file() and p.name != ".lock"} == {k: v for k, v in before.items()
                                                       if k != ".lock"}
    # the holder is gone (killed): its lock went with it
    assert train(scenes["a"], scenes["b"], run, settings=_settings(2)).step == 2


def test_a_failed_command_never_empties_a_folder_that_held_something(styletx, scenes,
                                                                     tmp_path):
    """A folder with a config.json (a run whose weights are gone, or another program's) is
    locked as a run; a command failing there must leave every file of it."""
    out = tmp_path / "project"
    (out / "data").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "data" / "notes.txt").write_text("precious")
    result = styletx("train", scenes["a"], tmp_path / "no-such-folder", "--out", out, *TINY)
    assert result.exit_code == 2
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "data"]
    assert (out / "data" / "notes.txt").read_text() == "precious"


def test_a_new_run_is_locked_too_and_leaves_nothing_when_it_fails(styletx, scenes, tmp_path):
    run = tmp_path / "new" / "run"
    with runs.run_lock(run):
        assert (run / ".lock").is_file()
        refused = styletx("train", scenes["a"], scenes["b"], "--out", run, *TINY)
        assert refused.exit_code == 1  # in this process (a thread of a notebook, say):
        assert refused.error_lines == [f"Error: {run}: another train() of this process is "
                                       "training in this run folder; wait for it to finish "
                                       "or use another --out"]
    assert not (tmp_path / "new").exists()  # made for the lock, removed as no run came of it


# -- plugins that raise, exit or hang at import ------------------------------------------------

HOSTILE = {
    "exits": ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    "interrupts": ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    "base": ("raise BaseException('odd')\n", "BaseException: odd"),
    "exitsinhook": ("import styletx, sys\n@styletx.hookimpl\n"
                    "def register_translators(register):\n    sys.exit('bye')\n",
                    "register_translators: SystemExit: bye"),
    "hangs": ("import time\ntime.sleep(30)\n", "did not finish importing in 0.5 s"),
}


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    def install(modules: dict[str, str]):
        eps = []
        for name, source in modules.items():
            (tmp_path / f"plug_{name}.py").write_text(textwrap.dedent(source))
            eps.append(importlib.metadata.EntryPoint(name, f"plug_{name}", "styletx"))
            sys.modules.pop(f"plug_{name}", None)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps)
        monkeypatch.setenv("STYLETX_PLUGIN_TIMEOUT", "0.5")

    return install


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_plugin_is_reported_and_the_rest_loads(plugins, name):
    source, message = HOSTILE[name]
    plugins({name: source, "good": GOOD})
    started = time.monotonic()
    registry = Registry().load()
    assert time.monotonic() - started < 10
    assert registry.errors == [f'Error loading plugin "{name}": {message}']
    assert {"cyclegan", "cyclegan2"} <= set(registry.translators)



def test_a_ctrl_c_while_plugins_load_stops_the_command(styletx, plugins, monkeypatch):
    """The user's Ctrl-C (a SIGINT, here arriving while a plugin imports) was taken for that
    plugin's failure: "Error loading plugin ...: KeyboardInterrupt", and the command ran on to
    the end. It stops the command now (exit 130); a plugin's own KeyboardInterrupt is still
    its failure (test above)."""
    import styletx.contract.registry as registry_module

    plugins({"slow": "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                     "time.sleep(5)\n", "good": GOOD})
    monkeypatch.setattr(registry_module, "_registry", None)
    try:
        result = styletx("plugins")
    finally:
        registry_module.reset_registry()
    assert result.exit_code == 130, result.stderr
    assert "Error loading plugin" not in result.stderr and "cyclegan" not in result.stdout
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

def test_the_cli_survives_a_plugin_that_exits(styletx, plugins, monkeypatch):
    import styletx.contract.registry as registry_module

    plugins({"exits": HOSTILE["exits"][0]})
    monkeypatch.setattr(registry_module, "_registry", None)
    try:
        result = styletx("plugins")
    finally:
        registry_module.reset_registry()
    assert result.exit_code == 1  # a plugin failed to load (not the plugin's 3)
    assert 'Error loading plugin "exits": SystemExit: 3' in result.stderr
    assert "cyclegan 0.2.0 (built-in)" in result.stdout


def _training_under_way(scenes, run: Path, stdout: int) -> subprocess.Popen:
    """A long training CLI in its own process, once its first progress line is out."""
    process = subprocess.Popen(
        [sys.executable, "-m", "styletx.cli", "train", str(scenes["a"]), str(scenes["b"]),
         *TINY, "--size", "16", "--steps", "100000", "--log-every", "5", "--out", str(run)],
        stdout=stdout, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in process.stderr:
        if line.startswith("step "):
            break
    return process


@pytest.mark.slow
def test_ctrl_c_with_the_output_piped_to_a_reader_that_left_saves(scenes, tmp_path):
    """``styletx train ... | tee log`` and Ctrl-C: tee goes first, so the output pipe has no
    reader; training still finishes its step, saves, and exits 130 (issue: exit 1, nothing
    saved, progress lost)."""
    run = tmp_path / "run"
    process = _training_under_way(scenes, run, stdout=subprocess.PIPE)
    process.stdout.close()
    process.stderr.close()  # the reader leaves, as tee does on Ctrl-C
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    step = json.loads((run / "config.json").read_text())["step"]
    assert step >= 1 and runs.load_resume(run)["step"] == step


def test_sigterm_saves_the_steps_done_as_ctrl_c_does(scenes, tmp_path):
    """``kill``, ``docker stop`` and systemd send SIGTERM: training died at once and lost the
    steps since its last checkpoint (up to 5 minutes of them). It finishes its step, saves and
    exits 143 (128 + 15) now."""
    run = tmp_path / "run"
    process = _training_under_way(scenes, run, stdout=subprocess.DEVNULL)
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 143, rest
    assert "SIGTERM: stopping after this step" in rest and "checkpoint saved" in rest
    step = json.loads((run / "config.json").read_text())["step"]
    logged = [json.loads(line)["step"] for line in (run / runs.LOG).read_text().splitlines()]
    assert step >= 1 and runs.load_resume(run)["step"] == step and logged[-1] <= step


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, "Terminated"),
                                            (signal.SIGINT, "KeyboardInterrupt")])
def test_a_second_signal_stops_at_once_as_that_signal(signum, raised):
    """The second SIGTERM raised KeyboardInterrupt, so the command exited 130 ("interrupted"),
    which a supervisor reads as Ctrl-C; it is Terminated (143) now."""
    from styletx.engine.training.loop import _StopAtStepBoundary

    stop = _StopAtStepBoundary()
    stop._handle(signum, None)  # the first: after this step
    with pytest.raises(KeyboardInterrupt) as caught:
        stop._handle(signum, None)
    assert type(caught.value).__name__ == raised


def test_debug_shows_the_traceback_above_the_one_line(styletx, tmp_path, monkeypatch):
    plain = styletx("convert", tmp_path / "no-run", "x.png", "-o", tmp_path / "o")
    assert plain.exit_code == 2 and len(plain.stderr.strip().splitlines()) == 1
    monkeypatch.delenv("STYLETX_DEBUG", raising=False)
    try:
        debug = CliRunner().invoke(cli, ["--debug", "convert", str(tmp_path / "no-run"), "x.png",
                                         "-o", str(tmp_path / "o")])
    finally:
        os.environ.pop("STYLETX_DEBUG", None)
    assert debug.exit_code == 2
    assert "Traceback" in debug.stderr and debug.stderr.strip().splitlines()[-1].startswith("Error")
