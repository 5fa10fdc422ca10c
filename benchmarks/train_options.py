"""Training steps per second of the CycleGAN default preset at 256 x 256 with and without each
speed option (``--amp``, ``--channels-last``, ``--compile``, ``--prefetch``), through the real
trainer, in one run. Meant for a GPU; on a CPU use a small ``--size`` and ``--preset tiny`` to
check that it runs.

    python benchmarks/train_options.py                       # CUDA, default preset, 256 px
    python benchmarks/train_options.py --device cpu --preset tiny --size 32 --steps 20

Each configuration trains a fresh run folder on the same generated scenes; the rate is the mean
``steps_per_s`` of ``log.jsonl`` after the first ``--warmup`` steps (so ``--compile``'s first,
slow steps are left out).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

CONFIGS = {  # name -> TrainSettings overrides
    "fp32": dict(amp=False, prefetch=0),
    "amp (bf16)": dict(amp=True, prefetch=0),
    "amp + channels-last": dict(amp=True, channels_last=True, prefetch=0),
    "amp + prefetch 2": dict(amp=True, prefetch=2),
    "amp + compile": dict(amp=True, compile=True, prefetch=0),
    "all": dict(amp=True, channels_last=True, compile=True, prefetch=2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    args = parser.parse_args()

    import torch

    from styletx.demo import make_image_dataset
    from styletx.engine.training import TrainSettings, train

    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    with tempfile.TemporaryDirectory() as tmp:
        data = make_image_dataset(Path(tmp) / "data", n_train=16, n_test=1,
                                  size=args.size + args.size // 8)
        for name, options in CONFIGS.items():
            if args.only and name not in args.only:
                continue
            run = Path(tmp) / name.replace(" ", "_")
            train(data["a"], data["b"], run, preset=args.preset,
                  settings=TrainSettings(steps=args.steps, size=args.size, device=args.device,
                                         progress=False, log_every=1, save_every=10**9,
                                         preview_every=10**9, **options))
            rates = [json.loads(line)["steps_per_s"]
                     for line in (run / "log.jsonl").read_text().splitlines()][args.warmup:]
            print(f"{name:22s} {sum(rates) / len(rates):7.2f} steps/s")


if __name__ == "__main__":
    main()
