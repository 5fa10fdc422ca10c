"""End-to-end voice conversion time of a 10 s utterance on the CPU with the default voice model.

Read, features (log-mel), generator (the default preset's CycleGAN-VC2 generator, converting in
cross-faded chunks), Griffin-Lim (32 iterations) and write, measured separately and together.
Target (DESIGN.md §7): ≤ 1 s, a real-time factor ≤ 0.1. The weights are those of a one-step
run: the architecture, not training, sets the time.

    python benchmarks/convert_voice.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

import styletx
from styletx.audio.synth import LOW, utterance, write_voice_folders

RATE = 22050


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="convert-voice-"))
    data = write_voice_folders(work / "data", n_train=3, n_test=1, seconds=2.0)
    styletx.train(data["a"], data["b"], work / "run", preset="default",
                  settings=styletx.TrainSettings(steps=1, device="cpu", progress=False))
    run = styletx.load_run(work / "run", device="cpu")
    source = work / "ten_seconds.wav"
    sf.write(source, utterance(LOW, 10.0, seed=3), RATE)

    run.convert_files([source], work / "warm")  # compile Numba kernels, warm caches
    total, _ = timed(lambda: run.convert_files([source], work / "out"), args.repeats)
    sample = run.domain.load(source)
    encoder_a, encoder_b = run.encoders["a"], run.encoders["b"]
    parts = {
        "read": timed(lambda: run.domain.load(source), args.repeats)[0],
        "features": timed(lambda: encoder_a.encode(sample), args.repeats)[0],
    }
    x = encoder_a.encode(sample)[None]
    parts["generator"], y = timed(lambda: run.convert_tensor(x, "a2b"), args.repeats)
    parts["Griffin-Lim"], converted = timed(lambda: encoder_b.decode(y[0], like=sample),
                                            args.repeats)
    parts["write"] = timed(lambda: run.domain.save(converted, work / "w.wav"), args.repeats)[0]
    print(f"10 s utterance, default voice model (ngf {run.translator.config.ngf}), "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}")
    for name, seconds in parts.items():
        print(f"  {name:<12} {seconds * 1000:8.1f} ms")
    print(f"  {'end to end':<12} {total * 1000:8.1f} ms   real-time factor {total / 10:.3f} "
          f"(target <= 0.1)")


if __name__ == "__main__":
    main()
