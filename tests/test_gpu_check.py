"""benchmarks/gpu_check.py: its CPU mode end to end (what a machine without CUDA runs), and its
GPU-mode verdicts and report on made-up figures (no GPU here)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402


def _numbers(value):
    """Every number in a JSON value (bools excluded)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_cpu_mode_end_to_end(tmp_path):
    out_json, out_md = tmp_path / "gpu_check.json", tmp_path / "gpu_check.md"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--threads", "1", "--json", str(out_json),
         "--markdown", str(out_md)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr
    results = json.loads(out_json.read_text())

    # One line says there is no CUDA, first thing on stdout; the JSON keeps it.
    first_line = proc.stdout.splitlines()[0]
    assert first_line.startswith("no CUDA device")
    assert results["note"] == first_line
    assert results["cuda"] is False and results["device"] == "cpu"
    assert results["complete"] is True and results["failed"] == [] and results["errors"] == {}
    assert results["scale"]["preset"] == "tiny"
    assert results["seconds"] < 300  # the CPU mode is the tiny scale (about 35 s on 2 cores)

    # Training: every translator on images and cyclegan on voice, fp32 and bf16 +
    # channels-last (autocast does nothing on a CPU), healthy losses and a measured rate.
    rows = results["train"]
    trained = {(r["translator"], r["domain"], r["config"]) for r in rows}
    assert trained == {(m, d, c) for m, d in gpu_check.TRANSLATORS
                       for c in (gpu_check.FP32, gpu_check.BF16_CL)}
    for row in rows:
        assert "error" not in row, row
        assert _positive(row["steps_per_s"]) and _positive(row["speedup"])
        assert row["losses_finite"] is True and row["decreasing"] is True
        assert row["progress_losses"] and all(
            math.isfinite(v) for v in row["final_losses"].values())
        assert row["logged_steps"] == results["scale"]["steps"]
    assert results["compile"].startswith("skipped")

    # Conversion: the device path (here the CPU, batched) against the CPU one at a time.
    convert = results["convert"]
    assert set(convert) == {f"{m}-{d}" for m, d in gpu_check.TRANSLATORS}
    for key, r in convert.items():
        assert r["match"] is True, (key, r)
        assert _positive(r["device_seconds"]) and _positive(r["cpu_seconds"])
    images = [r for r in convert.values() if "psnr_db" in r]
    assert len(images) == 3
    assert all(r["images"] == 2 and r["psnr_db"] >= gpu_check.IMAGE_PSNR_MIN for r in images)
    voice = convert["cyclegan-audio"]
    assert voice["seconds_of_audio"] == pytest.approx(6.0, abs=0.01)
    assert voice["spectrogram_snr_db"] >= gpu_check.VOICE_SNR_MIN

    # The torchrun job: two gloo processes, then resumed to twice the steps.
    ddp = results["ddp"]
    steps = results["scale"]["ddp_steps"]
    assert ddp["ok"] is True and ddp["nproc"] == 2 and ddp["process_group"] == "gloo"
    assert ddp["resumed"] is True and ddp["final_step"] == 2 * steps
    assert ddp["logged_steps"] == list(range(1, 2 * steps + 1))
    assert [r["returncode"] for r in ddp["runs"]] == [0, 0]

    # Griffin-Lim: the torch path (CPU here) against the Numba path on the same magnitude.
    gl = results["griffinlim"]
    assert _positive(gl["cpu_seconds"]) and _positive(gl["device_seconds"])
    assert _positive(gl["speedup"]) and gl["match"] is True
    assert _positive(gl["device_loop_seconds"]) and _positive(gl["loop_speedup"])
    assert abs(gl["sc_cpu"] - gl["sc_device"]) <= gpu_check.SC_TOLERANCE

    # Targets are GPU figures: n/a here, never PASS; every health check passed.
    targets = [r for r in results["checks"] if r["kind"] == "target"]
    assert len(targets) == 3
    assert all(r["status"] == "n/a (no CUDA)" for r in targets)
    health = [r for r in results["checks"] if r["kind"] == "check"]
    assert len(health) == 8 + 4 + 1 + 1 and all(r["status"] == "PASS" for r in health)
    assert all(math.isfinite(x) for x in _numbers(results))

    # The markdown summary: in the file and on stdout.
    text = out_md.read_text()
    assert text in proc.stdout
    assert "| check | value | needed | result |" in text and "no CUDA" in text
    assert "| cyclegan | image 32 | fp32 |" in text


def _row(model, domain, config, rate, **extra):
    return {"translator": model, "domain": domain, "config": config, "size": 256,
            "steps_per_s": rate, "logged_steps": 200, "losses_finite": True,
            "decreasing": True, "progress_first": 9.0, "progress_last": 3.0, **extra}


def test_gpu_verdicts_and_report():
    """On CUDA the targets are PASS or FAIL by their thresholds (a missing figure fails), and
    the report renders GPU results: speed-ups, a capped run, errors, the compile rows."""
    checks = gpu_check.Checks(cuda=True)
    checks.target("speed", 1.6, ">= 1.5x", True)
    checks.target("griffinlim", 4.0, ">= 10x", False)
    checks.target("missing", None, ">= 1.5x", None)
    assert [r["status"] for r in checks.rows] == ["PASS", "FAIL", "FAIL"]
    assert [r["name"] for r in checks.failed()] == ["griffinlim", "missing"]
    assert gpu_check.Checks(cuda=False).rows == []

    results = {
        "cuda": True, "note": None, "argv": ["--json", "r.json"], "date": "2026-12-01",
        "seconds": 321.0, "complete": True,
        "environment": {"device_name": "NVIDIA H200", "torch": "2.13.0", "cuda": "12.8",
                        "cudnn": 91000, "cpus": 16},
        "train": [_row("cyclegan", "image", gpu_check.FP32, 10.0, speedup=1.0),
                  _row("cyclegan", "image", gpu_check.BF16_CL, 17.0, speedup=1.7),
                  _row("vaegan", "image", gpu_check.BF16_CL, 3.0, speedup=1.2,
                       stopped_by_time=True),
                  {"translator": "pix2pix", "domain": "image", "config": gpu_check.FP32,
                   "error": "RuntimeError: boom"}],
        "compile": [_row("cyclegan", "image", gpu_check.COMPILED, 25.0, speedup=2.5)],
        "convert": {"cyclegan-image": {"images": 8, "shape": [288, 288, 3],
                                       "device_seconds": 0.2, "cpu_seconds": 3.0,
                                       "psnr_db": 47.5, "max_abs_diff_levels": 2.0},
                    "cyclegan-audio": {"seconds_of_audio": 60.0, "device_seconds": 0.9,
                                       "cpu_seconds": 4.0, "spectrogram_snr_db": 55.0,
                                       "wave_snr_db": 31.0},
                    "vaegan-image": {"error": "RuntimeError: out of memory"}},
        "griffinlim": {"seconds_of_audio": 60.0, "magnitude_shape": [513, 5169], "n_iter": 32,
                       "cpu_backend": "numba (rocket-fft)", "device_backend": "torch on cuda",
                       "cpu_seconds": 0.6, "device_seconds": 0.02, "speedup": 30.0,
                       "device_loop_seconds": 0.01, "loop_speedup": 60.0,
                       "sc_cpu": 0.05, "sc_device": 0.05},
        "ddp": {"nproc": 1, "process_group": None, "runs": [{"seconds": 12.0},
                                                           {"seconds": 11.0}],
                "resumed": True, "final_step": 20, "note": "one process"},
        "checks": checks.rows, "errors": {},
    }
    text = gpu_check.markdown(results)
    assert text.startswith("### GPU check: NVIDIA H200, 2026-12-01")
    assert "`python benchmarks/gpu_check.py --json r.json` in 321 s" in text
    assert "CUDA 12.8" in text and "no CUDA" not in text
    assert "| cyclegan | image 256 | bf16 + channels-last | 17.00 | 1.70x |" in text
    assert "| cyclegan | image 256 | bf16 + channels-last + compile | 25.00 | 2.50x |" in text
    assert "3.00 (200 steps: time cap)" in text
    assert "ERROR: RuntimeError: boom" in text and "ERROR: RuntimeError: out of memory" in text
    assert "PSNR 47.5 dB, max 2/255" in text and "spectrogram SNR 55.0 dB" in text
    assert "(30.0x; its loop alone" in text and "60.0x)" in text
    assert "no process group" in text
    assert "| missing |  | >= 1.5x | FAIL |" in text


def test_summarise_log(tmp_path):
    """steps/s is total steps over total time after the warm-up; the reconstruction losses
    decide 'falling'; a non-finite loss fails."""
    losses = [{"G_A": 1.0, "cycle_A": 10.0 - i, "D_A": 0.5} for i in range(10)]
    rates = [1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": i + 1, "steps_per_s": r, "losses": loss}) + "\n"
                           for i, (r, loss) in enumerate(zip(rates, losses)))
                   + json.dumps({"step": 10, "balance": {}}) + "\n")
    summary = gpu_check.summarise_log(tmp_path, warmup=2)
    assert summary["logged_steps"] == 10
    assert summary["steps_per_s"] == pytest.approx(8 / (4 / 2 + 4 / 4))
    assert summary["progress_losses"] == ["cycle_A"]
    assert summary["progress_first"] == pytest.approx(9.5)
    assert summary["progress_last"] == pytest.approx(1.5)
    assert summary["losses_finite"] and summary["decreasing"]

    losses[4]["G_A"] = float("nan")
    log.write_text("".join(json.dumps({"step": i + 1, "steps_per_s": 1.0, "losses": loss}) + "\n"
                           for i, loss in enumerate(losses)))
    summary = gpu_check.summarise_log(tmp_path, warmup=0)
    assert not summary["losses_finite"] and not summary["decreasing"]


def test_db_helpers_are_capped_and_json_safe():
    import numpy as np

    a = np.linspace(0, 1, 100)
    assert gpu_check.psnr_db(a, a) == gpu_check.CAP_DB
    assert gpu_check.snr_db(a, a) == gpu_check.CAP_DB
    assert gpu_check.snr_db(a, a * 1.01) == pytest.approx(40.0, abs=0.01)
    assert gpu_check.finite_or_none({"x": [1.0, float("nan")], "y": float("inf")}) == {
        "x": [1.0, None], "y": None}


def test_gpu_speed_cpu_mode(tmp_path):
    """benchmarks/gpu_speed.py without CUDA: two tiny eager configurations, each in its own
    process through the real trainer, with a rate, finite losses and a table."""
    out_json, out_md = tmp_path / "speed.json", tmp_path / "speed.md"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_speed.py"), "--steps", "20", "--warmup", "10",
         "--json", str(out_json), "--md", str(out_md)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["config"] for r in rows] == ["fp32", "fp32 autotune"]
    for row in rows:
        assert "error" not in row, row
        assert row["steps"] == 20 and row["timed_steps"] == 10
        assert _positive(row["steps_per_s"]) and row["losses_finite"] is True
    assert "| fp32 | " in out_md.read_text()
