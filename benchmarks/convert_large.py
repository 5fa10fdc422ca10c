"""Converting one large photograph with the default CycleGAN on the CPU: in one piece (as styletx
did before tiling) against in tiles (``styletx.engine.tiles``), each in a process of its own.
Reports the wall time of the conversion, the peak memory of the process, the PSNR between the two
outputs, and how much larger the difference is along the tiles' seams than elsewhere (a visible
seam would show there); writes crops around a tile corner (whole | tiled | difference x 10).

    python benchmarks/convert_large.py [--width 5120] [--height 2880] [--threads 2]

The photo is Debian's mate-backgrounds Garden.jpg scaled up to the size (a generated scene
without that package). The model is the default preset's (9-block ResNet, ngf 64, instance
norm) after one training step: the architecture sets time and memory, not the training.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO = Path("/usr/share/backgrounds/mate/nature/Garden.jpg")
OUT = Path(__file__).parent / "convert_large"
SEAM_BAND = 8  # pixels either side of a seam counted as "on the seam"


def child(spec: dict) -> None:
    """Convert the photo in one mode; print one JSON line: seconds and peak memory."""
    import torch

    import styletx
    from styletx.engine import tiles

    torch.set_num_threads(spec["threads"])
    if spec["mode"] == "whole":
        tiles.WHOLE_PIXELS = 10**12  # never tile: the conversion as it was before tiling
    run = styletx.load_run(spec["run"], device="cpu")
    loaded = _peak_mib()
    began = time.perf_counter()
    report = run.convert_files([spec["photo"]], spec["out"])
    seconds = time.perf_counter() - began
    assert len(report.converted) == 1, report.failed
    print(json.dumps({"seconds": seconds, "peak_mib": _peak_mib(), "after_load_mib": loaded}))


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def make_photo(path: Path, width: int, height: int) -> str:
    if PHOTO.is_file():
        image = Image.open(PHOTO).convert("RGB")
        scale = max(width / image.width, height / image.height)
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.LANCZOS).crop((0, 0, width, height))
        source = f"{PHOTO.name} scaled to {width}x{height}"
    else:
        from styletx.demo import make_scene

        image = Image.fromarray(make_scene(np.random.default_rng(0), 512)).resize(
            (width, height), Image.BICUBIC)
        source = f"a generated scene at {width}x{height} (no {PHOTO})"
    image.save(path)
    return source


def seams(whole: np.ndarray, tiled: np.ndarray) -> dict[str, float]:
    """PSNR between the outputs, and the mean difference on the seams against elsewhere."""
    from styletx.engine.apply import chunk_starts
    from styletx.engine.tiles import OVERLAP, TILE

    diff = np.abs(whole.astype(float) - tiled.astype(float)).mean(axis=2)
    mse = (diff**2).mean()
    on = np.zeros(diff.shape, bool)
    for axis, size in enumerate(diff.shape):
        for start in chunk_starts(size, TILE, TILE - OVERLAP)[1:]:  # where a tile begins
            band = slice(max(0, start - SEAM_BAND), start + OVERLAP + SEAM_BAND)
            if axis == 0:
                on[band, :] = True
            else:
                on[:, band] = True
    return {"psnr_db": float(10 * np.log10(255**2 / max(mse, 1e-12))),
            "mean_difference_on_seams": float(diff[on].mean()),
            "mean_difference_elsewhere": float(diff[~on].mean())}


def crops(whole: np.ndarray, tiled: np.ndarray, out: Path) -> None:
    from styletx.engine.tiles import OVERLAP, TILE

    top = left = TILE - OVERLAP - 128  # around the corner where four tiles meet
    window = (slice(top, top + 384), slice(left, left + 384))
    diff = np.clip(np.abs(whole[window].astype(int) - tiled[window].astype(int)) * 10, 0, 255)
    row = np.concatenate([whole[window], np.full((384, 4, 3), 255, np.uint8), tiled[window],
                          np.full((384, 4, 3), 255, np.uint8), diff.astype(np.uint8)], axis=1)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(out / "corner.png")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=5120)
    parser.add_argument("--height", type=int, default=2880)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    import styletx
    from styletx.demo import make_image_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = make_photo(tmp / "photo.png", args.width, args.height)
        data = make_image_dataset(tmp / "data", n_train=2, n_test=1, size=64)
        styletx.train(data["a"], data["b"], tmp / "run", preset="default",
                      settings=styletx.TrainSettings(steps=1, size=64, device="cpu",
                                                     progress=False))
        results = {}
        for mode in ("whole", "tiled"):
            spec = {"mode": mode, "run": str(tmp / "run"), "photo": str(tmp / "photo.png"),
                    "out": str(tmp / mode), "threads": args.threads}
            done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                  capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if done.returncode:
                sys.exit(f"{mode}: {done.stderr[-2000:]}")
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(mode, results[mode], flush=True)
        whole, tiled = (np.asarray(Image.open(tmp / mode / "photo.png").convert("RGB"))
                        for mode in ("whole", "tiled"))
        results["comparison"] = seams(whole, tiled)
        crops(whole, tiled, OUT)
    print(json.dumps({"photo": source, "threads": args.threads, **results}, indent=1))
    w, t = results["whole"], results["tiled"]
    print(f"\n| {args.width}x{args.height}, {args.threads} threads | seconds | peak memory "
          f"(process) |\n|---|---|---|\n| in one piece | {w['seconds']:.1f} | "
          f"{w['peak_mib'] / 1024:.2f} GiB |\n| in tiles | {t['seconds']:.1f} | "
          f"{t['peak_mib'] / 1024:.2f} GiB |")


if __name__ == "__main__":
    main()
