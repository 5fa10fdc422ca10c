"""Voice conversion quality on held-out sentences spoken by both voices.

Trains a voice CycleGAN on the bundled demo voices (or any A/B folders with held-out pairs),
converts test_a/, and prints for every held-out file the mel-cepstral distortion to the target
speaker's recording of the same words, before (source vs target) and after conversion, and the
median F0 of source, converted and target. Used to choose the default encoder and the pitch
option; the numbers go to benchmarks/RESULTS.md.

    python benchmarks/voice_quality.py --encoder mel --steps 2000
    python benchmarks/voice_quality.py --run runs/voices   # evaluate an existing run
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import styletx
from styletx.audio.metrics import mcd, median_f0

VOICES = Path(styletx.__file__).parent / "audio" / "demo_voices"


def evaluate(converted: Path, source: Path, target: Path) -> dict[str, float]:
    rows = []
    for t in sorted(target.glob("*.flac")):
        src, rate = sf.read(source / t.name, dtype="float32")
        tgt, _ = sf.read(t, dtype="float32")
        out, out_rate = sf.read(next(converted.glob(t.stem + ".*")), dtype="float32")
        assert out_rate == rate, "evaluate at the data's rate"
        rows.append((t.name, mcd(src, tgt, rate), mcd(out, tgt, rate),
                     median_f0(src, rate), median_f0(out, rate), median_f0(tgt, rate)))
    print(f"{'file':<14}{'MCD src':>9}{'MCD conv':>10}{'F0 src':>8}{'F0 conv':>9}{'F0 tgt':>8}")
    for name, *values in rows:
        print(f"{name:<14}" + "".join(f"{v:>9.2f}" for v in values))
    means = np.mean([r[1:] for r in rows], axis=0)
    print(f"{'mean':<14}" + "".join(f"{v:>9.2f}" for v in means))
    return dict(zip(["mcd_source", "mcd_converted", "f0_source", "f0_converted", "f0_target"],
                    map(float, means)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=VOICES,
                        help="folder with a/ b/ test_a/ test_b/")
    parser.add_argument("--run", type=Path, help="evaluate this run instead of training one")
    parser.add_argument("--encoder", default="mel")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--set", dest="settings", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    work = Path(tempfile.mkdtemp(prefix="voice-quality-"))
    run = args.run
    if run is None:
        from styletx.engine.model import parse_settings

        run = work / "run"
        start = time.perf_counter()
        styletx.train(args.data / "a", args.data / "b", run, preset=args.preset,
                      encoder=args.encoder, overrides=parse_settings(tuple(args.settings)),
                      settings=styletx.TrainSettings(steps=args.steps, progress=False,
                                                     preview_every=10**9, device="cpu"))
        print(f"trained {args.preset} ({args.encoder}) in {time.perf_counter() - start:.0f} s")
    styletx.load_run(run, device="cpu").convert_files([args.data / "test_a"], work / "converted")
    evaluate(work / "converted", args.data / "test_a", args.data / "test_b")


if __name__ == "__main__":
    main()
