"""A colour grade learnt from many small photographs a side, as a user with thousands of files
has them (a scale trial's set, 2026-12-07): does an unpaired model learn it at all?

    python benchmarks/many_files.py --out /tmp/many --steps 505
    python benchmarks/many_files.py --out /tmp/many --steps 505 --set sw_transport=false
    python benchmarks/many_files.py --out /tmp/many --steps 505 --grade sharpen --tag sharpen

Data (made once under --out/data): --files random crops (64-160 px a side) a side of the same
photographs as quality.py (scikit-image's and Debian's MATE backgrounds), side B under a known
warm grade (a colour matrix, gamma 0.85, blacks lifted; or --grade, one of quality.py's
tasks, under --out/data-GRADE); held out, --held other crops and their
graded truths. Each crop is drawn for one side only, so the sides share no picture. Trains
`styletx train --preset fast` (one thread, a fixed step count), converts the held-out crops and
prints the pooled PSNR of the conversions against the truth beside that of the untouched inputs
and of the best global affine colour map (least squares from input to truth: what a pure
colour model could reach).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import TASKS, find_photos, grade  # noqa: E402

WARM = np.array([[1.05, 0.08, 0.00], [0.02, 0.95, 0.03], [0.00, 0.10, 0.78]], np.float32)


def warm_grade(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 RGB under the known grade."""
    graded = (pixels.astype(np.float32) / 255) @ WARM.T
    graded = np.clip(graded, 0, 1) ** 0.85 * 0.92 + 0.05
    return (np.clip(graded, 0, 1) * 255 + 0.5).astype(np.uint8)


def graded(pixels: np.ndarray, task: str) -> np.ndarray:
    """``pixels`` under the warm grade, or one of quality.py's tasks (sharpen: a change no
    colour map can make, to see that a model does not invent one)."""
    if task == "warm":
        return warm_grade(pixels)
    return np.asarray(grade(task, Image.fromarray(pixels)))


def make_data(root: Path, files: int, held: int, seed: int = 0, task: str = "warm") -> None:
    if (root / "done").exists():
        return
    rng = np.random.default_rng(seed)
    photos = []
    for _, photo in find_photos():
        scale = 1000 / max(photo.size)  # large backgrounds: crops of a few hundred pixels
        if scale < 1:
            photo = photo.resize((round(photo.width * scale), round(photo.height * scale)),
                                 Image.LANCZOS)
        photos.append(np.asarray(photo))

    def crop() -> np.ndarray:
        photo = photos[rng.integers(len(photos))]
        h, w = (min(int(rng.integers(64, 161)), n) for n in photo.shape[:2])
        y, x = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
        return photo[y:y + h, x:x + w]

    for side in "ab":
        folder = root / f"train_{side}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            pixels = crop()
            Image.fromarray(graded(pixels, task) if side == "b" else pixels).save(
                folder / f"{i:05d}.png")
    for side in ("test_a", "test_b"):
        (root / side).mkdir(exist_ok=True)
    for i in range(held):
        pixels = crop()
        Image.fromarray(pixels).save(root / "test_a" / f"{i:04d}.png")
        Image.fromarray(graded(pixels, task)).save(root / "test_b" / f"{i:04d}.png")
    (root / "done").touch()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a - b) ** 2)))


def score(data: Path, converted: Path) -> dict:
    names = sorted(p.name for p in (data / "test_a").iterdir())

    def pixels(folder: Path) -> np.ndarray:
        return np.concatenate([np.asarray(Image.open(folder / n).convert("RGB"), np.float64)
                               .reshape(-1, 3) for n in names])

    inputs, outputs, truth = pixels(data / "test_a"), pixels(converted), pixels(data / "test_b")
    design = np.c_[inputs, np.ones(len(inputs))]
    affine, *_ = np.linalg.lstsq(design, truth, rcond=None)
    return {"untouched": psnr(inputs, truth), "converted": psnr(outputs, truth),
            "best_affine": psnr(np.clip(design @ affine, 0, 255), truth)}


def train_and_convert(train_a: Path, train_b: Path, test_a: Path, run: Path, converted: Path,
                      steps: int, seed: int, settings: list[str]) -> None:
    """``styletx train --preset fast`` (one thread, ``steps`` steps, each KEY=VALUE of
    ``settings`` as --set), then the held-out ``test_a`` converted into ``converted``."""
    sets = [arg for s in settings for arg in ("--set", s)]
    subprocess.run(["styletx", "-q", "train", train_a, train_b, "--out", run, "--preset", "fast",
                    "--steps", str(steps), "--threads", "1", "--seed", str(seed), *sets],
                   check=True)
    subprocess.run(["styletx", "-q", "convert", run, test_a, "-o", converted, "--threads", "1"],
                   check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--files", type=int, default=2500, help="training crops a side")
    parser.add_argument("--held", type=int, default=300, help="held-out pairs")
    parser.add_argument("--steps", type=int, default=505)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="KEY=VALUE", help="a translator setting (train --set)")
    parser.add_argument("--grade", default="warm", choices=("warm", *TASKS),
                        help="side B's change (the data goes to --out/data-GRADE but warm's)")
    parser.add_argument("--tag", default="fast")
    args = parser.parse_args()
    data = args.out / ("data" if args.grade == "warm" else f"data-{args.grade}")
    run, converted = args.out / "runs" / args.tag, args.out / "converted" / args.tag
    make_data(data, args.files, args.held, task=args.grade)
    train_and_convert(data / "train_a", data / "train_b", data / "test_a", run, converted,
                      args.steps, args.seed, args.settings)
    result = {"tag": args.tag, "grade": args.grade, "steps": args.steps, "settings": args.settings,
              **{k: round(v, 2) for k, v in score(data, converted).items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
