"""Training speed by thread count, on an idle machine and beside other CPU-heavy processes.

    python benchmarks/threads.py [--steps 40] [--model cyclegan --preset fast --size 64]

Each measurement is a fresh process that trains the model on random 64 px batches and reports
steps per second (median of the steps after two warm-up ones). Thread settings compared:
torch's own default (one thread per logical CPU), styletx's default (``styletx.engine.threads``:
OMP_NUM_THREADS, else physical cores per local process) and one thread. The load is N other
processes, each a training loop of the same model with torch's default threads, as a second
user or a second run on the same machine would be.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

WORKER = r"""
import json, statistics, sys, time, torch
threads, model, preset, size, steps = sys.argv[1:6]
if threads != "torch":
    torch.set_num_threads(int(threads))
from styletx.contract.registry import get_registry
from styletx.engine.model import make_config
cls = get_registry().translator(model)
size = int(size)
config = cls.config_for_data(make_config(cls, preset, {}, "image"),
                             {"a": (3, size, size), "b": (3, size, size)}, (size, size))
torch.manual_seed(0)
t = cls(config, 3, 3)
t.to(torch.device("cpu"), amp=False)
t.configure_optimizers(1 << 30)
t.train(True)
batch = {k: torch.rand(4, 3, size, size) * 2 - 1 for k in "ab"}
times = []
for i in range(int(steps) + 2):
    began = time.perf_counter()
    t.training_step(batch, i)
    times.append(time.perf_counter() - began)
    if steps == "0":  # a load process: run until killed
        times.clear()
print(json.dumps({"threads": torch.get_num_threads(),
                  "steps_per_s": 1 / statistics.median(times[2:])}))
"""


def measure(threads: str, args) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, threads, args.model, args.preset,
                          str(args.size), str(args.steps)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": ""}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_load(count: int, args) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return [subprocess.Popen([sys.executable, "-c", WORKER.replace(
        "for i in range(int(steps) + 2):", "while True:\n    i = 0"), "torch", args.model,
        args.preset, str(args.size), "0"], env=env) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cyclegan")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--loads", default="0,1", help="numbers of load processes to try")
    args = parser.parse_args()
    from styletx.engine.threads import default_threads, physical_cores

    os.environ.pop("OMP_NUM_THREADS", None)
    ours = default_threads()
    print(f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"{physical_cores()} physical cores; styletx default {ours} thread(s); "
          f"{args.model} {args.preset} at {args.size} px, batch 4")
    print(f"{'load processes':>14}  {'threads':>22}  {'steps/s':>8}  {'vs torch default':>16}")
    for load in (int(n) for n in args.loads.split(",")):
        loaders = start_load(load, args)
        time.sleep(3 if load else 0)  # let the load get going
        try:
            rows = [("torch default", measure("torch", args)),
                    (f"styletx default ({ours})", measure(str(ours), args)),
                    ("1", measure("1", args))]
        finally:
            for p in loaders:
                p.kill()
        base = rows[0][1]["steps_per_s"]
        for name, row in rows:
            print(f"{load:>14}  {name:>22}  {row['steps_per_s']:8.2f}  "
                  f"{row['steps_per_s'] / base:15.2f}x", flush=True)


if __name__ == "__main__":
    main()
