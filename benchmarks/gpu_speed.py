"""How fast the image CycleGAN trains on a GPU at the reference setting (default preset, 256 px,
batch 1) in fp32 and in bf16 + channels-last, eager and through torch.compile (its default
mode and "reduce-overhead", i.e. CUDA graphs), with cuDNN's autotuner on and off, compiling
the generators alone or every network. Each configuration runs in its own process (a clean
compiler and cuDNN state) through styletx's own trainer, within a deadline for the whole.

    python benchmarks/gpu_speed.py [--steps 160] [--deadline 420] [--json r.json] [--md r.md]

Without CUDA it runs two tiny eager configurations on the CPU, so that it stays testable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name: (TrainSettings options, compile every network (not the generators alone)).
# In the order they run: what decides the product's defaults first.
CONFIGS = {
    "fp32": ({"amp": False, "prefetch": 0, "cudnn_autotune": False}, False),
    "bf16+cl": ({"amp": True, "channels_last": True, "prefetch": 0,
                 "cudnn_autotune": False}, False),
    "bf16+cl reduce-overhead G+D": ({"amp": True, "channels_last": True, "prefetch": 0,
                                     "compile": True, "compile_mode": "reduce-overhead"}, True),
    "fp32 reduce-overhead G+D": ({"amp": False, "prefetch": 0, "compile": True,
                                  "compile_mode": "reduce-overhead"}, True),
    "fp32 autotune": ({"amp": False, "prefetch": 0}, False),
    "bf16+cl autotune": ({"amp": True, "channels_last": True, "prefetch": 0}, False),
    "bf16+cl autotune prefetch 2": ({"amp": True, "channels_last": True, "prefetch": 2}, False),
    "bf16+cl reduce-overhead G": ({"amp": True, "channels_last": True, "prefetch": 0,
                                   "compile": True, "compile_mode": "reduce-overhead"}, False),
    "bf16+cl compile default G+D": ({"amp": True, "channels_last": True, "prefetch": 0,
                                     "compile": True, "compile_mode": "default"}, True),
}
CPU_CONFIGS = ("fp32", "fp32 autotune")
COMPILED_SECONDS = 150  # one compiled configuration's cap (eager ones: a third of it)


def child(spec: dict) -> None:
    """One configuration: train, then print one JSON line with its figures."""
    import torch

    from styletx.contract.interfaces import Translator
    from styletx.engine.training import TrainSettings, train

    options, compile_all = CONFIGS[spec["config"]]
    if compile_all:  # the discriminators too: they run three times a step
        Translator.generator_networks = lambda self: self.networks()
    run = Path(spec["run"])
    began = time.perf_counter()
    result = train(spec["a"], spec["b"], run, model="cyclegan", preset=spec["preset"],
                   settings=TrainSettings(steps=spec["steps"], size=spec["size"],
                                          device=spec["device"], progress=False,
                                          log_every=10, save_every=10**9,
                                          preview_every=10**9, workers=0,
                                          minutes=spec["minutes"], **options))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["step"] > spec["warmup"] and r["steps_per_s"] > 0]
    rate = len(timed) / sum(1 / r["steps_per_s"] for r in timed) if timed else 0.0
    losses = [v for r in records for v in r["losses"].values()]
    cycle = [r["losses"]["cycle_A"] + r["losses"]["cycle_B"] for r in records]
    print(json.dumps({
        "steps": result.step, "steps_per_s": rate, "timed_steps": 10 * len(timed),
        "first_10_steps_s": 10 / records[0]["steps_per_s"] if records else None,
        "seconds": time.perf_counter() - began,
        "losses_finite": all(math.isfinite(v) for v in losses),
        "cycle_first": cycle[0], "cycle_last": cycle[-1],
        "gpu_memory_gib": (torch.cuda.max_memory_allocated() / 2**30
                           if torch.cuda.is_available() else 0.0),
    }), flush=True)


def run_config(name: str, data: dict, tmp: Path, args, cuda: bool, left: float) -> dict:
    compiled = CONFIGS[name][0].get("compile", False)
    cap = min(COMPILED_SECONDS if compiled else COMPILED_SECONDS / 3, left - 15)
    spec = {"config": name, "run": str(tmp / name.replace(" ", "_").replace("+", "_")),
            "a": str(data["a"]), "b": str(data["b"]), "steps": args.steps,
            "warmup": args.warmup, "preset": "default" if cuda else "tiny",
            "size": 256 if cuda else 64, "device": "cuda" if cuda else "cpu",
            "minutes": cap / 60}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=cap + 60)
    except subprocess.TimeoutExpired:
        return {"config": name, "error": f"no result in {cap + 60:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        return {"config": name, "error": f"exit {done.returncode}: " + " | ".join(tail)}
    return {"config": name, **json.loads(lines[-1])}


def markdown(rows: list[dict], device: str) -> str:
    base = next((r["steps_per_s"] for r in rows if r["config"] == "fp32" and "error" not in r),
                None)
    out = [f"Image CycleGAN, default preset, 256 px, batch 1, on {device}. \"autotune\": "
           "cuDNN's autotuner on (as in every compiled row); \"G\": the generators compiled, "
           "\"G+D\": every network.", "",
           "| configuration | steps/s | vs fp32 eager | first 10 steps (s) | steps | "
           "cycle loss first → last | peak GPU GiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['config']} | failed: {r['error'][:300]} | | | | | |")
            continue
        ratio = f"{r['steps_per_s'] / base:.2f}×" if base else ""
        out.append(f"| {r['config']} | {r['steps_per_s']:.2f} | {ratio} | "
                   f"{r['first_10_steps_s']:.1f} | {r['steps']} | "
                   f"{r['cycle_first']:.2f} → {r['cycle_last']:.2f} | "
                   f"{r['gpu_memory_gib']:.2f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--warmup", type=int, default=30, help="steps left out of the rate")
    parser.add_argument("--deadline", type=float, default=420, help="seconds for all of it")
    parser.add_argument("--only", nargs="*", default=None, help="configurations to run")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    import torch

    from styletx.demo import make_image_dataset

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "CPU (no CUDA: two tiny eager runs)"
    print(f"device: {device}, torch {torch.__version__}", flush=True)
    names = args.only or (list(CONFIGS) if cuda else list(CPU_CONFIGS))
    began, rows = time.monotonic(), []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_image_dataset(Path(tmp) / "d", n_train=16, n_test=2,
                                  size=288 if cuda else 72)
        for name in names:
            left = args.deadline - (time.monotonic() - began)
            if left < 60:
                rows.append({"config": name, "error": "skipped: the deadline was near"})
                continue
            rows.append(run_config(name, data, Path(tmp), args, cuda, left))
            print(json.dumps(rows[-1]), flush=True)
    text = markdown(rows, device)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                         "rows": rows}, indent=1))
    if args.md:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
