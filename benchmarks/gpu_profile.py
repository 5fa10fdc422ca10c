"""Where a CycleGAN training step's time goes on a GPU (the image CycleGAN, default preset,
256 px): steps/s in fp32, bf16 + channels-last, with prefetching and larger batches, and a
torch.profiler summary of the busy GPU time against the wall time.

    python benchmarks/gpu_profile.py [--steps 120]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def rate(run: Path, warmup: int) -> float:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    timed = [r["steps_per_s"] for r in records[warmup:] if r.get("steps_per_s", 0) > 0]
    return len(timed) / sum(1 / r for r in timed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--profile-steps", type=int, default=30)
    args = parser.parse_args()
    from styletx.demo import make_image_dataset
    from styletx.engine.training import TrainSettings, train

    configs = {
        "fp32": dict(amp=False, prefetch=0),
        "bf16+cl": dict(amp=True, channels_last=True, prefetch=0),
        "fp32 prefetch 2": dict(amp=False, prefetch=2),
        "bf16+cl prefetch 2": dict(amp=True, channels_last=True, prefetch=2),
        "fp32 batch 4": dict(amp=False, prefetch=2, batch_size=4),
        "bf16+cl batch 4": dict(amp=True, channels_last=True, prefetch=2, batch_size=4),
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = make_image_dataset(Path(tmp) / "d", n_train=16, n_test=2, size=288)
        for name, options in configs.items():
            run = Path(tmp) / name.replace(" ", "_").replace("+", "_")
            began = time.perf_counter()
            train(data["a"], data["b"], run, model="cyclegan", preset="default",
                  settings=TrainSettings(steps=args.steps, size=256, device="cuda",
                                         progress=False, log_every=1, save_every=10**9,
                                         preview_every=10**9, workers=0, **options))
            r = rate(run, args.warmup)
            images = options.get("batch_size", 1)
            print(f"{name:22s} {r:6.2f} steps/s  {r * images:6.2f} images/s  "
                  f"({time.perf_counter() - began:.1f} s)", flush=True)
        for name in ("fp32", "bf16+cl"):
            run = Path(tmp) / ("prof_" + name.replace("+", "_"))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                began = time.perf_counter()
                train(data["a"], data["b"], run, model="cyclegan", preset="default",
                      settings=TrainSettings(steps=args.profile_steps, size=256, device="cuda",
                                             progress=False, log_every=1, save_every=10**9,
                                             preview_every=10**9, workers=0,
                                             **configs[name]))
                torch.cuda.synchronize()
                wall = time.perf_counter() - began
            events = prof.key_averages()
            gpu = sum(e.self_device_time_total for e in events) / 1e6
            launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel",
                                                                "cuLaunchKernel",
                                                                "cudaLaunchKernelExC"))
            print(f"\n== {name}: {args.profile_steps} steps, wall {wall:.2f} s (with setup), "
                  f"GPU kernels {gpu:.2f} s, kernel launches {launches} "
                  f"({launches / args.profile_steps:.0f} a step)", flush=True)
            print(events.table(sort_by="self_device_time_total", row_limit=14,
                               max_name_column_width=50), flush=True)
            print(events.table(sort_by="self_cpu_time_total", row_limit=12,
                               max_name_column_width=50), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
