"""The GPU paths checked on one GPU, in one script of about 6 minutes: training speed and
health, GPU conversion against the CPU path, a torchrun job and its resume, and Griffin-Lim.

    python benchmarks/gpu_check.py --json gpu_check.json --markdown gpu_check.md   # CUDA
    python benchmarks/gpu_check.py --cpu --threads 1     # the CPU mode (as without CUDA)

Parts, in this order (``--only`` picks some):

train       each built-in translator at its ``default`` preset (images at 256 px: cyclegan,
            pix2pix, vaegan; voice: cyclegan's audio default) through the real trainer, for
            ``--steps`` (200) steps in fp32 and in bf16 autocast + channels-last. Checks that
            every logged loss is finite and that the reconstruction losses (cycle, L1, recon)
            fall from the first fifth of the run to the last; reports steps/s after
            ``--warmup`` steps and the speed-up over fp32.
convert     each image run (the fp32 runs of ``train``) converts a batch of held-out images on
            the GPU (batched, as ``styletx convert`` does) and on the CPU one at a time; the
            voice run converts a 60 s recording both ways. Outputs must match: images PSNR >=
            40 dB (8-bit), voice: the translated spectrogram's SNR >= 30 dB (the wave's SNR is
            reported: the audio encoder runs Griffin-Lim on the CPU in both).
griffinlim  ``styletx.audio.dsp.griffinlim`` on a CUDA tensor (torch.stft / istft on the GPU)
            against the Numba CPU path on the magnitude of the same 60 s recording (32
            iterations, the same initial phase): equal spectral convergence, and the speed-up
            of the whole call and of its loop alone (the call draws its phase on the CPU).
ddp         ``torchrun --standalone --nproc-per-node N -m styletx.cli train ...`` (N: the GPUs,
            at most 2; on the CPU 2 gloo processes) for a few steps, then the same command with
            twice the steps: it must resume, and the log must hold every step once. One
            process under torchrun joins a process group too, so one GPU runs NCCL and DDP.
compile     the image CycleGAN (every translator with ``--compile-all``) in bf16 +
            channels-last with ``--compile``; last, as its compilation is the slowest start.

Targets (PASS / FAIL): bf16 + channels-last >= 1.5x fp32 steps/s for the image CycleGAN at
256 px; GPU Griffin-Lim >= 10x the CPU path for a 60 s file; GPU outputs match CPU outputs.

Time is bounded: each training configuration stops after ``--config-minutes`` (1.5; compile
``--compile-minutes``, 2) through the trainer's own ``minutes``, no part or configuration starts
after ``--budget-minutes`` (6), a torchrun command is stopped after ``--ddp-timeout`` seconds,
and the JSON is rewritten after each part, so a run cut short keeps what it measured.

Without CUDA (or with ``--cpu``) it says so in one line and runs the same parts on the CPU at a
tiny scale (``tiny`` presets at 32 px, 24 steps, a 6 s recording; about 35 s on two busy cores
with one thread), where the targets are "n/a" and the health checks (finite, falling losses;
conversion; resume; Griffin-Lim agreement) still count. Results go to ``--json``, and a markdown
summary ready to paste into benchmarks/RESULTS.md to stdout and ``--markdown``. Exit status 1
when a check fails or a part raises, else 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks' helpers

PARTS = ("train", "convert", "griffinlim", "ddp", "compile")  # in this order: compile, the
#                                                              slowest to start, comes last
SPEEDUP_TARGET = 1.5  # bf16 + channels-last over fp32, image CycleGAN at 256 px
GRIFFINLIM_TARGET = 10.0  # GPU torch path over the Numba CPU path, 60 s file
IMAGE_PSNR_MIN = 40.0  # dB, GPU against CPU conversion, 8-bit images
VOICE_SNR_MIN = 30.0  # dB, the translated spectrogram, GPU against CPU
SC_TOLERANCE = 0.01  # |spectral convergence GPU - CPU|, Griffin-Lim
CAP_DB = 100.0  # identical outputs: PSNR/SNR reported as this
PROGRESS_LOSS = re.compile(r"cycle|l1|recon", re.IGNORECASE)  # losses that must fall

# (scale) -> the settings of each scale; "gpu" is the real check, "cpu" the tiny CPU mode.
SCALES = {
    "gpu": dict(preset="default", size=256, steps=200, warmup=20, config_minutes=1.5,
                voice_seconds=60.0, voice_train=(4, 4.0), images=(16, 8), ddp_steps=10,
                gl_repeats=5),
    "cpu": dict(preset="tiny", size=32, steps=24, warmup=4, config_minutes=1.0,
                voice_seconds=6.0, voice_train=(3, 2.0), images=(6, 2), ddp_steps=2,
                gl_repeats=3),
}
# (model, domain) trained by the train part, in order; the image CycleGAN is the headline.
TRANSLATORS = (("cyclegan", "image"), ("pix2pix", "image"), ("vaegan", "image"),
               ("cyclegan", "audio"))
FP32, BF16_CL, COMPILED = "fp32", "bf16 + channels-last", "bf16 + channels-last + compile"

log = logging.getLogger("gpu_check")


# --------------------------------------------------------------------------- small helpers

def finite_or_none(value):
    """JSON has no NaN or infinity: such values become null (their checks say why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def capped_db(signal_power: float, noise_power: float) -> float:
    """10 log10(signal / noise), at most CAP_DB (identical outputs)."""
    if noise_power <= signal_power * 10 ** (-CAP_DB / 10):
        return CAP_DB
    return float(10 * np.log10(signal_power / noise_power))


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    return capped_db(float(np.mean(reference**2)), float(np.mean((reference - other) ** 2)))


def psnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """PSNR of [0, 1] images, capped (``styletx.image.metrics.psnr`` gives inf for equal ones)."""
    from styletx.image.metrics import psnr

    return min(CAP_DB, psnr(reference, other))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class Checks:
    """PASS / FAIL / n/a lines: targets (GPU figures) and health checks (any device)."""

    def __init__(self, cuda: bool):
        self.cuda, self.rows = cuda, []

    def target(self, name: str, value: float | None, threshold: str, ok: bool | None) -> None:
        status = "n/a (no CUDA)" if not self.cuda else "PASS" if ok else "FAIL"  # None: FAIL
        self.rows.append({"kind": "target", "name": name, "value": value, "threshold": threshold,
                          "status": status})

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.rows.append({"kind": "check", "name": name, "value": detail, "threshold": "",
                          "status": "PASS" if ok else "FAIL"})

    def failed(self) -> list[dict]:
        return [row for row in self.rows if row["status"] == "FAIL"]


# --------------------------------------------------------------------------- data

def make_data(root: Path, scale: dict) -> dict[str, dict[str, Path] | Path]:
    """Generated images (unpaired and paired, a little larger than the crop), voices, and one
    long recording (the conversion's and Griffin-Lim's input)."""
    import soundfile as sf

    from styletx.audio.synth import LOW, utterance, write_voice_folders
    from styletx.demo import make_image_dataset, make_paired_image_dataset

    n_train, n_test = scale["images"]
    size = scale["size"] + scale["size"] // 8
    files, seconds = scale["voice_train"]
    long_file = root / "long" / f"voice_{scale['voice_seconds']:g}s.flac"
    long_file.parent.mkdir(parents=True, exist_ok=True)
    sf.write(long_file, utterance(LOW, scale["voice_seconds"], seed=3), 22050, format="FLAC",
             subtype="PCM_16")
    return {
        "unpaired": make_image_dataset(root / "images", n_train=n_train, n_test=n_test,
                                       size=size),
        "paired": make_paired_image_dataset(root / "paired", n_train=n_train, n_test=n_test,
                                            size=size),
        "voices": write_voice_folders(root / "voices", n_train=files, n_test=1, seconds=seconds),
        "long_voice": long_file,
    }


def folders_for(data: dict, model: str, domain: str) -> dict[str, Path]:
    if domain == "audio":
        return data["voices"]
    return data["paired"] if model == "pix2pix" else data["unpaired"]


# --------------------------------------------------------------------------- train

def train_configs(model: str, domain: str, compiled: bool, compile_all: bool) -> dict[str, dict]:
    """Configuration name -> TrainSettings overrides (train_options.py's, by name): fp32 and
    bf16 + channels-last, or (``compiled``) the latter with --compile, for the image CycleGAN
    (every translator with ``compile_all``)."""
    from train_options import CONFIGS

    if not compiled:
        return {FP32: CONFIGS["fp32"], BF16_CL: CONFIGS["amp + channels-last"]}
    if compile_all or (model, domain) == TRANSLATORS[0]:
        return {COMPILED: {**CONFIGS["amp + channels-last"], "compile": True}}
    return {}


def summarise_log(run: Path, warmup: int) -> dict:
    """Steps/s after ``warmup`` steps (total steps over total time) and the loss checks, from
    the trainer's log.jsonl (logged every step)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    records = [r for r in records if "losses" in r]
    if not records:
        raise RuntimeError(f"{run / 'log.jsonl'} logged no training step")
    timed = [r["steps_per_s"] for r in records[warmup:] if r["steps_per_s"] > 0]
    rate = len(timed) / sum(1 / r for r in timed) if timed else float("nan")
    values = [v for r in records for v in r["losses"].values()]
    finite = bool(values) and all(math.isfinite(v) for v in values)
    keys = [k for k in records[0]["losses"] if PROGRESS_LOSS.search(k)] or list(
        records[0]["losses"])
    progress = [sum(r["losses"][k] for k in keys) for r in records]
    window = max(2, len(progress) // 5)
    first, last = float(np.mean(progress[:window])), float(np.mean(progress[-window:]))
    return {"logged_steps": len(records), "steps_per_s": rate, "losses_finite": finite,
            "progress_losses": keys, "progress_first": first, "progress_last": last,
            "decreasing": bool(finite and last < first),
            "final_losses": records[-1]["losses"]}


def part_train(work: Path, data: dict, scale: dict, device: str, args, checks: Checks,
               runs: dict, compiled: bool = False, fp32_rows: list[dict] = ()) -> list[dict]:
    """Train every (translator, data) in each configuration (``compiled``: the compile part,
    whose speed-ups are over the ``fp32_rows`` of the train part)."""
    from styletx.engine.training import TrainSettings, train

    rows = []
    for model, domain in TRANSLATORS:
        folders = folders_for(data, model, domain)
        size = None if domain == "audio" else scale["size"]  # voice: the preset's 64 frames
        for config, options in train_configs(model, domain, compiled, args.compile_all).items():
            name = f"{model}-{domain}-{config}".replace(" + ", "-").replace(" ", "")
            run = work / "train" / name
            row = {"translator": model, "domain": domain, "config": config,
                   "preset": scale["preset"], "size": size or 64, "steps": args.steps}
            began = time.perf_counter()
            if time.monotonic() > args.deadline:
                row["error"] = f"skipped: the --budget-minutes {args.budget_minutes:g} are spent"
                rows.append(row)
                continue
            try:
                result = train(folders["a"], folders["b"], run, model=model,
                               preset=scale["preset"],
                               settings=TrainSettings(
                                   steps=args.steps, size=size, device=device, progress=False,
                                   log_every=1, save_every=10**9, preview_every=10**9, workers=0,
                                   minutes=args.compile_minutes if compiled else
                                   args.config_minutes, **options))
                row.update(summarise_log(run, args.warmup))
                row["stopped_by_time"] = result.step < args.steps
                if config == FP32:
                    runs[(model, domain)] = run
            except Exception as exc:  # noqa: BLE001 - reported, and the next one runs
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["traceback"] = traceback.format_exc()
            row["seconds"] = time.perf_counter() - began
            rows.append(row)
            log.info("train %-30s %s", name, _train_line(row))
    fp32 = {(r["translator"], r["domain"]): r.get("steps_per_s") for r in [*fp32_rows, *rows]
            if r["config"] == FP32}
    for row in rows:
        base, rate = fp32.get((row["translator"], row["domain"])), row.get("steps_per_s")
        if base and rate and math.isfinite(base) and math.isfinite(rate):
            row["speedup"] = rate / base
    for row in rows:
        label = f"{row['translator']} {row['domain']} {row['config']}"
        if "error" in row:
            checks.check(f"train {label}", False, row["error"])
        elif config_too_short(row, args.warmup):
            cap = args.compile_minutes if compiled else args.config_minutes
            checks.check(f"train {label}: steps/s measured", False,
                         f"the {cap:g} min cap stopped it at step "
                         f"{row['logged_steps']}, within the {args.warmup} warm-up steps")
        else:
            checks.check(f"train {label}: losses finite and falling", row["decreasing"],
                         f"{'+'.join(row['progress_losses'])} {row['progress_first']:.3f} -> "
                         f"{row['progress_last']:.3f}")
    if compiled:
        return rows
    headline = next((r for r in rows if (r["translator"], r["domain"]) == TRANSLATORS[0]
                     and r["config"] == BF16_CL), {})
    speedup = headline.get("speedup")
    checks.target(f"bf16 + channels-last vs fp32 steps/s, image CycleGAN at {scale['size']} px",
                  speedup, f">= {SPEEDUP_TARGET}x",
                  None if speedup is None else speedup >= SPEEDUP_TARGET)
    return rows


def config_too_short(row: dict, warmup: int) -> bool:
    return row["logged_steps"] <= warmup


def _train_line(row: dict) -> str:
    if "error" in row:
        return "ERROR " + row["error"]
    return (f"{row['steps_per_s']:.2f} steps/s, losses finite {row['losses_finite']}, "
            f"falling {row['decreasing']} ({row['seconds']:.1f} s)")


# --------------------------------------------------------------------------- convert

def ensure_run(work: Path, data: dict, scale: dict, model: str, domain: str, runs: dict) -> Path:
    """The train part's fp32 run, or (``--only convert``) a 2-step one: the architecture, not
    the training, decides whether GPU and CPU agree."""
    if (model, domain) in runs:
        return runs[(model, domain)]
    from styletx.engine.training import TrainSettings, train

    folders = folders_for(data, model, domain)
    run = work / "convert-runs" / f"{model}-{domain}"
    train(folders["a"], folders["b"], run, model=model, preset=scale["preset"],
          settings=TrainSettings(steps=2, size=None if domain == "audio" else scale["size"],
                                 device="cpu", progress=False, workers=0))
    runs[(model, domain)] = run
    return run


def convert_images(run_path: Path, inputs: Path, work: Path, device: str) -> dict:
    """The device batched (as ``styletx convert``) against the CPU one image at a time."""
    from styletx.demo import load_rgb
    from styletx.engine.convert import load_run

    result = {}
    outputs = {}
    for label, dev, batch in (("device", device, 8), ("cpu", "cpu", 1)):
        run = load_run(run_path, device=dev)
        out = work / label
        first = sorted(inputs.iterdir())[0]
        run.convert_files([first], out / "warm", batch_size=batch)  # kernels, cuDNN plans
        sync(dev)
        began = time.perf_counter()
        report = run.convert_files([inputs], out / "timed", batch_size=batch)
        sync(dev)
        result[f"{label}_seconds"] = time.perf_counter() - began
        if report.failed:
            raise RuntimeError(f"{label} conversion failed: {report.failed}")
        outputs[label] = {src.name: load_rgb(dst) for src, dst in report.converted}
    pairs = [(outputs["cpu"][k], outputs["device"][k]) for k in sorted(outputs["cpu"])]
    result["images"] = len(pairs)
    result["shape"] = list(pairs[0][0].shape)
    result["psnr_db"] = min(psnr_db(a, b) for a, b in pairs)  # the worst image
    result["max_abs_diff_levels"] = float(max(np.abs(a - b).max() for a, b in pairs) * 255)
    result["match"] = result["psnr_db"] >= IMAGE_PSNR_MIN
    return result


def convert_voice(run_path: Path, recording: Path, work: Path, device: str) -> dict:
    """The long recording, whole-file (chunked, batched, decoded) on the device and on the CPU;
    also the translated spectrograms, compared before Griffin-Lim."""
    from styletx.engine.convert import load_run

    result, waves, spectrograms = {}, {}, {}
    for label, dev in (("device", device), ("cpu", "cpu")):
        run = load_run(run_path, device=dev)
        sample = run.domain.load(recording)
        x = run.encoders["a"].encode(sample)[None]
        run.convert_tensor(x[..., :512], "a2b")  # warm-up
        sync(dev)
        began = time.perf_counter()
        report = run.convert_files([recording], work / label)
        sync(dev)
        result[f"{label}_seconds"] = time.perf_counter() - began
        if report.failed:
            raise RuntimeError(f"{label} conversion failed: {report.failed}")
        waves[label] = run.domain.load(report.converted[0][1]).wave
        spectrograms[label] = run.convert_tensor(x, "a2b").numpy()
    result["seconds_of_audio"] = len(waves["cpu"]) / 22050
    result["frames"] = int(spectrograms["cpu"].shape[-1])
    result["spectrogram_snr_db"] = snr_db(spectrograms["cpu"], spectrograms["device"])
    result["spectrogram_max_abs_diff"] = float(
        np.abs(spectrograms["cpu"] - spectrograms["device"]).max())
    result["wave_snr_db"] = snr_db(waves["cpu"], waves["device"])
    result["match"] = result["spectrogram_snr_db"] >= VOICE_SNR_MIN
    return result


def part_convert(work: Path, data: dict, scale: dict, device: str, checks: Checks,
                 runs: dict) -> dict:
    results = {}
    for model, domain in TRANSLATORS:
        key = f"{model}-{domain}"
        try:
            run = ensure_run(work, data, scale, model, domain, runs)
            if domain == "audio":
                results[key] = convert_voice(run, data["long_voice"], work / "convert" / key,
                                             device)
            else:
                test = folders_for(data, model, domain)["test_a"]
                results[key] = convert_images(run, test, work / "convert" / key, device)
        except Exception as exc:  # noqa: BLE001
            results[key] = {"error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc(), "match": False}
        log.info("convert %-16s %s", key, {k: v for k, v in results[key].items()
                                          if k != "traceback"})
        r = results[key]
        detail = r.get("error") or (
            f"spectrogram SNR {r['spectrogram_snr_db']:.1f} dB, wave SNR "
            f"{r['wave_snr_db']:.1f} dB" if domain == "audio" else
            f"PSNR {r['psnr_db']:.1f} dB, max diff {r['max_abs_diff_levels']:.0f}/255")
        checks.check(f"convert {key} on {device}: runs" + (" and matches CPU" if device != "cpu"
                                                           else ""), r["match"], detail)
    matched = all(r["match"] for r in results.values())
    worst = [f"{key} {r['psnr_db']:.1f} dB" if "psnr_db" in r else
             f"{key} {r['spectrogram_snr_db']:.1f} dB" for key, r in results.items()
             if "error" not in r]
    checks.target("GPU outputs match CPU outputs (all translators, images and voice)",
                  ", ".join(worst),
                  f"PSNR >= {IMAGE_PSNR_MIN:g} dB (images), spectrogram SNR >= "
                  f"{VOICE_SNR_MIN:g} dB (voice)", matched)
    return results


# --------------------------------------------------------------------------- ddp

def part_ddp(work: Path, data: dict, scale: dict, device: str, args, checks: Checks) -> dict:
    """A torchrun job of N processes for a few steps, then the same command with twice the
    steps, which must resume from the checkpoint."""
    import torch

    if device != "cpu":
        torch.cuda.empty_cache()  # the earlier parts' cached blocks, for the training processes
    nproc = args.nproc or (min(2, torch.cuda.device_count()) if device != "cpu" else 2)
    run = work / "ddp" / "run"
    folders = data["unpaired"]
    steps = scale["ddp_steps"]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)

    def command(total: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={nproc}", "-m", "styletx.cli", "train",
                str(folders["a"]), str(folders["b"]), "--out", str(run),
                "--preset", scale["preset"], "--size", str(scale["size"]),
                "--steps", str(total), "--device", device, "--save-every", str(steps),
                "--log-every", "1", "--workers", "0"]

    result = {"nproc": nproc, "steps": [steps, 2 * steps],
              "process_group": "nccl" if device != "cpu" else "gloo"}
    outputs = []
    run.parent.mkdir(parents=True, exist_ok=True)
    for total in (steps, 2 * steps):
        began = time.perf_counter()
        # Started outside the checkout: "-m styletx.cli" must find the installed styletx,
        # not a styletx/ folder in the current directory.
        returncode, stderr = run_group(command(total), env, args.ddp_timeout, cwd=run.parent)
        outputs.append({"returncode": returncode, "seconds": time.perf_counter() - began,
                        "resumed": f"resuming {run} from step {steps}" in stderr,
                        "ddp": "DistributedDataParallel over" in stderr,
                        "stderr_tail": stderr[-3000:]})
        if returncode != 0:
            break
    result["runs"] = outputs
    ok = len(outputs) == 2 and all(o["returncode"] == 0 for o in outputs)
    logged = []
    if (run / "log.jsonl").exists():
        logged = [json.loads(line).get("step") for line in
                  (run / "log.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() \
        else {}
    result["logged_steps"] = logged
    result["final_step"] = config.get("step")
    result["resumed"] = outputs[-1]["resumed"]
    result["ddp"] = all(o["ddp"] for o in outputs)
    result["ok"] = bool(ok and result["resumed"] and result["ddp"]
                        and result["final_step"] == 2 * steps
                        and logged == list(range(1, 2 * steps + 1)))
    log.info("ddp %s", {k: v for k, v in result.items() if k != "runs"})
    detail = (f"{nproc} process(es), {result['process_group'] or 'no process group'}; steps "
              f"{steps} then resumed to {result['final_step']}")
    if not ok:
        detail += "; exit status " + "/".join(str(o["returncode"]) for o in outputs)
    checks.check("torchrun job runs and resumes", result["ok"], detail)
    return result


def run_group(command: list[str], env: dict, timeout: float,
              cwd: Path | None = None) -> tuple[int | str, str]:
    """Run ``command``; past ``timeout`` seconds, stop it with every process it started.
    Returns (exit status or why it was stopped, stderr).

    torchrun starts its workers in sessions of their own, so a signal to its process group
    misses them: it gets SIGTERM first (it then stops its workers), and whatever of its process
    tree is left 20 s later gets SIGKILL."""
    import signal

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=cwd)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stderr
    except subprocess.TimeoutExpired:
        tree = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            for pid in [proc.pid, *tree]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _, stderr = proc.communicate()
        return f"stopped after {timeout:g} s", stderr


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# --------------------------------------------------------------------------- griffinlim

def part_griffinlim(data: dict, scale: dict, device: str, checks: Checks) -> dict:
    """Numba CPU path against the torch path on ``device`` (CPU mode: the torch CPU path), on
    the magnitude of the long recording: n_fft 1024, hop 256, 32 iterations, momentum 0.99,
    seed 0 for both (the same initial phase)."""
    import soundfile as sf
    import torch
    from griffinlim import interleaved

    from styletx.audio import dsp

    n_fft, hop, n_iter = 1024, 256, 32
    wave, rate = sf.read(data["long_voice"], dtype="float32")
    magnitude = dsp.stft_magnitude(wave, n_fft, hop)
    on_device = torch.from_numpy(magnitude).to(device)
    outputs = {}

    def numba():
        outputs["cpu"] = dsp.griffinlim(magnitude, n_fft, hop, n_iter, seed=0, backend="numba")

    def torch_path():
        y = dsp.griffinlim(on_device, n_fft, hop, n_iter, seed=0, backend="torch")
        sync(device)
        outputs["device"] = y.cpu().numpy()

    # The same initial phase, drawn once and already on the device: the torch path's loop
    # alone (each call above draws its phase on the CPU in float64, as the Numba path does).
    angles = torch.from_numpy(2 * np.pi * np.random.RandomState(0).random_sample(
        magnitude.shape)).to(device, torch.float32)

    def torch_loop():
        dsp.griffinlim(on_device, n_fft, hop, n_iter, init_phase=angles, backend="torch")
        sync(device)

    numba(), torch_path(), torch_loop()  # warm-up: Numba's compilation (or cache), cuFFT plans
    times = interleaved({"cpu": (lambda: None, numba), "device": (lambda: None, torch_path),
                         "loop": (lambda: None, torch_loop)}, scale["gl_repeats"])
    sc = {k: float(dsp.spectral_convergence(magnitude, y, n_fft, hop))
          for k, y in outputs.items()}
    result = {"seconds_of_audio": len(wave) / rate, "magnitude_shape": list(magnitude.shape),
              "n_iter": n_iter, "cpu_backend": f"numba ({dsp.FFT_BACKEND})",
              "device_backend": f"torch on {device}", "cpu_seconds": times["cpu"],
              "device_seconds": times["device"], "speedup": times["cpu"] / times["device"],
              "device_loop_seconds": times["loop"],
              "loop_speedup": times["cpu"] / times["loop"],
              "sc_cpu": sc["cpu"], "sc_device": sc["device"],
              "wave_snr_db": snr_db(outputs["cpu"], outputs["device"])}
    result["match"] = abs(sc["cpu"] - sc["device"]) <= SC_TOLERANCE
    log.info("griffinlim %s", result)
    checks.check(f"Griffin-Lim torch path on {device} matches the Numba path", result["match"],
                 f"spectral convergence {sc['device']:.4f} vs {sc['cpu']:.4f}")
    checks.target(f"GPU Griffin-Lim vs Numba CPU, {result['seconds_of_audio']:.0f} s file",
                  result["speedup"], f">= {GRIFFINLIM_TARGET:g}x",
                  result["speedup"] >= GRIFFINLIM_TARGET)
    return result


# --------------------------------------------------------------------------- report

def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"### GPU check: {env['device_name']}, {results['date']}", "",
             "`" + " ".join(["python benchmarks/gpu_check.py", *results["argv"]]) + "`"
             + f" in {results['seconds']:.0f} s; torch {env['torch']}, "
             + (f"CUDA {env['cuda']}, cuDNN {env['cudnn']}" if results["cuda"] else "no CUDA")
             + f", {env['cpus']} CPUs" + ("" if results["cuda"] else f". {results['note']}")
             + ("" if results.get("complete", True) else " (incomplete: still running or "
                "stopped)"), ""]
    train = [*results.get("train", []), *(results["compile"] if isinstance(
        results.get("compile"), list) else [])]
    if train:
        lines += ["| translator | data | config | steps/s | vs fp32 | losses finite | "
                  "falling (first -> last fifth) |", "|---|---|---|---:|---:|---|---|"]
        for r in train:
            if "error" in r:
                lines.append(f"| {r['translator']} | {r['domain']} | {r['config']} | "
                             f"ERROR: {r['error'][:80]} | | | |")
                continue
            speed = f"{r['speedup']:.2f}x" if r.get("speedup") else ""
            steps = f" ({r['logged_steps']} steps: time cap)" if r.get("stopped_by_time") else ""
            lines.append(f"| {r['translator']} | {r['domain']} {r['size']} | {r['config']} | "
                         f"{r['steps_per_s']:.2f}{steps} | {speed} | {r['losses_finite']} | "
                         f"{r['decreasing']} ({r['progress_first']:.3f} -> "
                         f"{r['progress_last']:.3f}) |")
        lines.append("")
    convert = results.get("convert")
    if convert:
        lines += ["| conversion | on device | CPU | agreement |", "|---|---:|---:|---|"]
        for key, r in convert.items():
            if "error" in r:
                lines.append(f"| {key} | ERROR: {r['error'][:80]} | | |")
            elif "psnr_db" in r:
                lines.append(f"| {key}: {r['images']} images {r['shape'][1]}x{r['shape'][0]} | "
                             f"{r['device_seconds']:.2f} s | {r['cpu_seconds']:.2f} s | "
                             f"PSNR {r['psnr_db']:.1f} dB, max {r['max_abs_diff_levels']:.0f}"
                             "/255 |")
            else:
                lines.append(f"| {key}: {r['seconds_of_audio']:.0f} s recording | "
                             f"{r['device_seconds']:.2f} s | {r['cpu_seconds']:.2f} s | "
                             f"spectrogram SNR {r['spectrogram_snr_db']:.1f} dB, wave "
                             f"{r['wave_snr_db']:.1f} dB |")
        lines.append("")
    gl = results.get("griffinlim")
    if gl:
        lines += [f"Griffin-Lim, {gl['seconds_of_audio']:.0f} s ({gl['magnitude_shape'][1]} "
                  f"frames), {gl['n_iter']} iterations: {gl['cpu_backend']} "
                  f"{gl['cpu_seconds'] * 1e3:.0f} ms, {gl['device_backend']} "
                  f"{gl['device_seconds'] * 1e3:.0f} ms ({gl['speedup']:.1f}x; its loop alone, "
                  f"given the initial phase on the device: {gl['device_loop_seconds'] * 1e3:.0f}"
                  f" ms, {gl['loop_speedup']:.1f}x); spectral convergence {gl['sc_cpu']:.4f} / "
                  f"{gl['sc_device']:.4f}.", ""]
    ddp = results.get("ddp")
    if ddp and "error" not in ddp:
        lines += [f"torchrun: {ddp['nproc']} process(es) "
                  f"({ddp['process_group'] or 'no process group'}), "
                  + " s, ".join(f"{o['seconds']:.1f}" for o in ddp["runs"])
                  + f" s; resumed: {ddp['resumed']}, final step {ddp['final_step']}."
                  + (f" Note: {ddp['note']}." if ddp.get("note") else ""), ""]
    lines += ["| check | value | needed | result |", "|---|---|---|---|"]
    for row in results["checks"]:
        value = row["value"]
        value = f"{value:.2f}" if isinstance(value, float) else ("" if value is None else value)
        lines.append(f"| {row['name']} | {value} | {row['threshold']} | {row['status']} |")
    errors = [name for name, part in results.get("errors", {}).items()]
    if errors:
        lines += ["", "Parts that raised or were skipped: " + ", ".join(errors)]
    return "\n".join(lines) + "\n"


def environment(cuda: bool) -> dict:
    import torch

    return {"torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "device_name": torch.cuda.get_device_name() if cuda else
            (platform.processor() or platform.machine()) + " CPU",
            "gpus": torch.cuda.device_count() if cuda else 0, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the markdown summary here (it is printed too)")
    parser.add_argument("--cpu", action="store_true",
                        help="the CPU mode even when CUDA is available")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=None)
    parser.add_argument("--scale", choices=tuple(SCALES), default=None,
                        help="sizes: gpu (default presets, 256 px, 60 s) or cpu (tiny); "
                        "default: gpu with CUDA, else cpu")
    parser.add_argument("--steps", type=int, default=None, help="training steps per config "
                        "(200; CPU mode 24)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="steps left out of steps/s (20; CPU mode 4)")
    parser.add_argument("--budget-minutes", type=float, default=6.0,
                        help="start no part and no training configuration after this long "
                        "(the rest is reported as skipped, a failure); 6")
    parser.add_argument("--config-minutes", type=float, default=None,
                        help="each training configuration stops after this long (train "
                        "--minutes; 1.5, CPU mode 1), so a slow --compile cannot eat the run")
    parser.add_argument("--compile-minutes", type=float, default=2.0,
                        help="the same for the --compile configurations (2)")
    parser.add_argument("--compile-all", action="store_true",
                        help="--compile for every translator, not only the image CycleGAN")
    parser.add_argument("--nproc", type=int, default=None,
                        help="torchrun processes (default: the GPUs, at most 2; CPU mode 2)")
    parser.add_argument("--ddp-timeout", type=float, default=150,
                        help="seconds each torchrun command may take")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: styletx's; the CPU mode's test uses 1)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    args.deadline = time.monotonic() + 60 * args.budget_minutes
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("styletx").setLevel(logging.WARNING)

    import torch

    from styletx.engine.threads import set_threads

    if args.threads:
        set_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    scale = dict(SCALES[args.scale or ("gpu" if cuda else "cpu")])
    args.steps = args.steps or scale["steps"]
    args.warmup = scale["warmup"] if args.warmup is None else args.warmup
    args.config_minutes = args.config_minutes or scale["config_minutes"]
    note = None
    if not cuda:
        note = ("no CUDA device" + (" (--cpu)" if torch.cuda.is_available() else "")
                + ": running the CPU parts" + (" at a tiny scale" if scale["preset"] == "tiny"
                                               else "") + "; these are not GPU figures")
        print(note, flush=True)
    parts = [part for part in PARTS if part in (args.only or PARTS)]
    checks = Checks(cuda)
    results: dict = {"cuda": cuda, "device": device, "note": note, "argv": sys.argv[1:]
                     if argv is None else list(argv),
                     "date": datetime.date.today().isoformat(), "scale": scale,
                     "environment": environment(cuda), "parts": parts, "errors": {}}
    runs: dict = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = make_data(work / "data", scale)
        results["data_seconds"] = time.perf_counter() - began
        for part in parts:
            started = time.perf_counter()
            if time.monotonic() > args.deadline:
                results["errors"][part] = (f"skipped: the --budget-minutes "
                                           f"{args.budget_minutes:g} are spent")
                checks.check(f"{part} part runs", False, results["errors"][part])
                continue
            try:
                if part == "train":
                    results["train"] = part_train(work, data, scale, device, args, checks, runs)
                elif part == "compile":
                    if cuda:
                        results["compile"] = part_train(work, data, scale, device, args, checks,
                                                        runs, compiled=True,
                                                        fp32_rows=results.get("train", []))
                    else:
                        results["compile"] = "skipped: the CPU mode does not compile"
                elif part == "convert":
                    results["convert"] = part_convert(work, data, scale, device, checks, runs)
                elif part == "ddp":
                    results["ddp"] = part_ddp(work, data, scale, device, args, checks)
                elif part == "griffinlim":
                    results["griffinlim"] = part_griffinlim(data, scale, device, checks)
            except Exception as exc:  # noqa: BLE001 - one broken part must not hide the rest
                results["errors"][part] = traceback.format_exc()
                checks.check(f"{part} part runs", False, f"{type(exc).__name__}: {exc}")
                log.error("%s part failed:\n%s", part, results["errors"][part])
            results.setdefault("part_seconds", {})[part] = time.perf_counter() - started
            log.info("-- %s part: %.1f s", part, results["part_seconds"][part])
            save(results, checks, began, args, final=False)  # what is done survives a kill
    text = save(results, checks, began, args, final=True)
    print(text)
    return 1 if results["failed"] else 0


def save(results: dict, checks: Checks, began: float, args, final: bool) -> str:
    """Write the JSON (and the markdown) of the results so far; returns the markdown."""
    results["checks"] = checks.rows
    results["failed"] = [row["name"] for row in checks.failed()]
    results["seconds"] = time.perf_counter() - began
    results["complete"] = final
    text = markdown(results)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(finite_or_none(results), indent=1, allow_nan=False,
                                        default=str))
    return text


if __name__ == "__main__":
    sys.exit(main())
