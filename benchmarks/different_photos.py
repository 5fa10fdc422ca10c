"""A grade learnt from *different* photographs on each side, as users' folders hold them: how
hard may the `fast` CycleGAN's colour loss pull before the photos' subjects are taken for the
style? (2026-12-07; results in RESULTS.md, "How hard the colours pull".)

    python benchmarks/different_photos.py --out /tmp/diff --sets winter8 --set lambda_sw=2.5
    python benchmarks/different_photos.py --out /tmp/diff --sets winter8 --set lambda_sw=5

Photos: quality.py's (Debian's MATE nature backgrounds, scikit-image's colour photos), the
photographs of Debian's lomiri-wallpapers-16.04 and, for the winter sets, scikit-learn's two
sample images and two more MATE backgrounds. No photo is on both sides. Sets (made once under
--out/data):

- ``warm13``: 13 whole photos a side (longer side 1000 px), B under many_files.py's warm grade;
  held out: Wood, coffee, sunset, GreenMeadow (longer side 768) and their graded truths.
- ``crops260``: the same photos as 20 random crops (96-200 px) each: 260 files a side.
- ``winter8``: 8 whole photos a side from the MATE, scikit-image and scikit-learn photos, B under
  the "winter" grade of a user's trial (white balance x(0.88, 0.98, 1.12), shadows lifted to
  0.1, saturation x0.65); held out: Wood, YellowFlower, GreenTraditional, coffee, Elephants.
- ``winter15``: winter8's photos plus the Lomiri ones: 15 and 14.

Each run: ``styletx train --preset fast --steps N --threads 1`` (plus --set), then the held-out
photos converted; prints one JSON line: pooled PSNR of the untouched inputs, the conversions
and the best global affine colour map against the truth, and each photo's (untouched,
converted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from many_files import psnr, score, train_and_convert, warm_grade  # noqa: E402
from quality import find_photos  # noqa: E402

LOMIRI = Path("/usr/share/backgrounds")  # apt-get install lomiri-wallpapers-16.04
LOMIRI_PHOTOS = ("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Kleiber_by_Lukas_Baubkus",
                 "Picture_0B_by_freespace", "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede",
                 "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich",
                 "friends_by_Aitzol_Berasategi", "life_by_Aitzol_Berasategi",
                 "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
                 "sunset_by_Aitzol_Berasategi")
MATE = Path("/usr/share/backgrounds/mate")
SETS = ("warm13", "crops260", "winter8", "winter15")


def winter_grade(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 RGB: cooler, shadows lifted, less saturated (a user's trial)."""
    x = np.clip(pixels.astype(np.float32) / 255 * np.array([0.88, 0.98, 1.12], np.float32), 0, 1)
    x = 0.1 + 0.9 * x
    luma = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = luma + 0.65 * (x - luma)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def lomiri_photos() -> dict[str, Image.Image]:
    missing = [n for n in LOMIRI_PHOTOS if not (LOMIRI / f"{n}.jpg").is_file()]
    if missing:
        sys.exit(f"missing {LOMIRI}/{missing[0]}.jpg: apt-get install lomiri-wallpapers-16.04")
    return {n.split("_by")[0]: Image.open(LOMIRI / f"{n}.jpg").convert("RGB")
            for n in LOMIRI_PHOTOS}


def fitted(photo: Image.Image, longest: int) -> np.ndarray:
    scale = longest / max(photo.size)
    if scale < 1:
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)),
                             Image.LANCZOS)
    return np.asarray(photo)


def save_side(folder: Path, photos: dict, names: list[str], grade, crops: int = 0,
              rng: np.random.Generator | None = None) -> None:
    """Each photo (longer side 1000 px) graded by ``grade``, whole or as ``crops`` crops."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = fitted(photos[name], 1000)
        if not crops:
            Image.fromarray(grade(pixels)).save(folder / f"{name}.png")
        for i in range(crops):
            h, w = (min(int(rng.integers(96, 201)), n) for n in pixels.shape[:2])
            y = rng.integers(0, pixels.shape[0] - h + 1)
            x = rng.integers(0, pixels.shape[1] - w + 1)
            Image.fromarray(grade(pixels[y:y + h, x:x + w])).save(folder / f"{name}-{i:02d}.png")


def save_held(root: Path, photos: dict, names: list[str], grade) -> None:
    for side in ("test_a", "test_b"):
        (root / side).mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = fitted(photos[name], 768)
        Image.fromarray(pixels).save(root / "test_a" / f"{name}.png")
        Image.fromarray(grade(pixels)).save(root / "test_b" / f"{name}.png")


def unchanged(pixels: np.ndarray) -> np.ndarray:
    return pixels


def make_warm(root: Path, crops: int) -> None:
    photos = dict(find_photos()) | lomiri_photos()
    held = ["Wood", "coffee", "sunset", "GreenMeadow"]
    rest = [n for n in photos if n not in held]
    rng = np.random.default_rng(0)
    rng.shuffle(rest)
    save_side(root / "a", photos, rest[0::2], unchanged, crops, rng)
    save_side(root / "b", photos, rest[1::2], warm_grade, crops, rng)
    save_held(root, photos, held, warm_grade)


def make_winter(root: Path, more: bool) -> None:
    from sklearn.datasets import load_sample_images

    photos = dict(find_photos())
    photos |= {n: Image.fromarray(a) for n, a in zip(("china", "flower"),
                                                     load_sample_images().images)}
    photos["GreenTraditional"] = Image.open(MATE / "desktop" / "GreenTraditional.jpg")
    photos["Elephants"] = Image.open(MATE / "abstract" / "Elephants.jpg")
    held = ["Wood", "YellowFlower", "GreenTraditional", "coffee", "Elephants"]
    rng = np.random.default_rng(1)
    rest = [n for n in photos if n not in held]
    rng.shuffle(rest)
    extra = lomiri_photos()
    names = list(extra)
    rng.shuffle(names)
    a, b = rest[0::2], rest[1::2]
    if more:
        photos |= extra
        a, b = a + names[0::2], b + names[1::2]
    photos = {n: p.convert("RGB") for n, p in photos.items()}
    save_side(root / "a", photos, a, unchanged)
    save_side(root / "b", photos, b, winter_grade)
    save_held(root, photos, held, winter_grade)


def make_data(root: Path, name: str) -> Path:
    folder = root / name
    if not (folder / "done").exists():
        {"warm13": lambda: make_warm(folder, 0), "crops260": lambda: make_warm(folder, 20),
         "winter8": lambda: make_winter(folder, False),
         "winter15": lambda: make_winter(folder, True)}[name]()
        (folder / "done").touch()
    return folder


def per_photo(data: Path, converted: Path) -> dict[str, tuple[float, float]]:
    def pixels(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"), np.float64)

    return {p.stem: (round(psnr(pixels(p), pixels(data / "test_b" / p.name)), 2),
                     round(psnr(pixels(converted / p.name), pixels(data / "test_b" / p.name)), 2))
            for p in sorted((data / "test_a").iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sets", default=",".join(SETS), help=f"of {', '.join(SETS)}")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="KEY=VALUE", help="a translator setting (train --set)")
    parser.add_argument("--tag", default="fast")
    args = parser.parse_args()
    for name in args.sets.split(","):
        data = make_data(args.out / "data", name)
        run, converted = (args.out / kind / f"{name}-{args.tag}" for kind in ("runs", "converted"))
        train_and_convert(data / "a", data / "b", data / "test_a", run, converted, args.steps,
                          args.seed, args.settings)
        weight = json.loads((run / "config.json").read_text())["config"]["lambda_sw"]
        result = {"set": name, "tag": args.tag, "steps": args.steps, "lambda_sw": weight,
                  **{k: round(v, 2) for k, v in score(data, converted).items()},
                  "per_photo": per_photo(data, converted)}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
