"""Image translation quality on real photographs, against the truth and the untouched input.

    python benchmarks/quality.py          # every task, model and preset (~1 h on 2 cores)
    python benchmarks/quality.py --tasks sepia --models pix2pix --presets fast --minutes 2

Photographs: scikit-image's bundled photos (``pip install scikit-image``) and Debian's MATE
nature backgrounds (``apt-get install mate-backgrounds``: /usr/share/backgrounds/mate/nature).
Each photo is scaled to a shorter side of 3 x --size and cut into square tiles of 1.5 x --size;
every fourth photo is held out for testing. Domain B is a known transform of domain A (a "task"),
so a conversion can be scored against the true B image:

    sepia       the classic sepia matrix                                       (global grade)
    split_tone  teal shadows, orange highlights, by luminance                  (global grade)
    curve       +0.3 stop exposure and an S-shaped contrast curve              (global grade)
    sharpen     an unsharp mask, radius 2 px, 120 %                            (local change)

Unpaired models (cyclegan, vaegan) learn from the A tiles of half the training tiles and the B
tiles of the other half; pix2pix learns from aligned pairs of all of them. ``tiny`` trains for
--tiny-steps steps, ``fast`` for --minutes of wall clock (``train --minutes``; or --fast-steps
steps); each training process computes with one thread and --jobs of them run at once. Reported
per run: PSNR and SSIM of the held-out conversions (rounded to 8 bits a channel, as ``styletx
convert`` saves them; before 2026-12-05 the unrounded floats, which differ by about 0.01 dB)
against the truth, the same for the untouched inputs, the PSNR at the first checkpoint, and the
wall time. Writes results.json, results.md and a grid per task (input | each run | truth) under
--out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                  "motorcycle_left.png")  # the colour photographs among its bundled files
MODELS = ("cyclegan", "pix2pix", "vaegan")
PRESETS = ("tiny", "fast")
GLOBAL_TASKS = ("sepia", "split_tone", "curve")
TASKS = (*GLOBAL_TASKS, "sharpen")
GRID_TILES = 4  # test tiles shown per task


# -- photographs ---------------------------------------------------------------------------------
def find_photos() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) of every photograph found; exits with how to install them if none."""
    photos = [(p.stem, Image.open(p).convert("RGB")) for p in sorted(MATE_NATURE.glob("*.jpg"))]
    try:
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        photos += [(Path(name).stem, Image.open(folder / name).convert("RGB"))
                   for name in SKIMAGE_PHOTOS]
    except ImportError:
        print("scikit-image not installed: using only the MATE photos "
              "(pip install scikit-image adds 5)", file=sys.stderr)
    if len(photos) < 8:
        sys.exit("need real photographs: apt-get install mate-backgrounds and "
                 "pip install scikit-image")
    return photos


def tiles_of(photo: Image.Image, size: int) -> list[Image.Image]:
    """Square tiles of 1.5 x ``size`` from the photo scaled to a shorter side of 3 x size."""
    return square_tiles(photo, 3 * size, size * 3 // 2)


def square_tiles(photo: Image.Image, side: int, tile: int) -> list[Image.Image]:
    """``tile``-pixel squares from the photo scaled to a shorter side of ``side`` pixels."""
    scale = side / min(photo.size)
    photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.LANCZOS)
    return [photo.crop((x, y, x + tile, y + tile))
            for y in range(0, photo.height - tile + 1, tile)
            for x in range(0, photo.width - tile + 1, tile)]


# -- tasks: B = task(A) ----------------------------------------------------------------------------
SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
CYANOTYPE = SEPIA[::-1]  # sepia's rows for red and blue swapped: a cold monochrome


def grade(task: str, image: Image.Image) -> Image.Image:
    if task == "sharpen":
        return image.filter(ImageFilter.UnsharpMask(radius=2, percent=120, threshold=0))
    x = np.asarray(image, np.float64) / 255
    if task == "sepia":
        y = x @ SEPIA.T
    elif task == "cyanotype":
        y = x @ CYANOTYPE.T
    elif task == "split_tone":
        luma = (x @ [0.299, 0.587, 0.114])[..., None]
        y = x + 0.18 * (1 - luma) ** 2 * [-1.0, 0.3, 0.6] + 0.18 * luma**2 * [0.9, 0.3, -0.9]
    elif task == "curve":
        y = np.clip(x * 2**0.3, 0, 1)
        y = y + 0.6 * (y * y * (3 - 2 * y) - y)  # towards smoothstep: an S-shaped contrast curve
    else:
        raise ValueError(task)
    return Image.fromarray((np.clip(y, 0, 1) * 255 + 0.5).astype(np.uint8))


def make_task_data(root: Path, task: str, photos, size: int) -> dict[str, Path]:
    """Folders unpaired_a/ unpaired_b/ paired_a/ paired_b/ test_a/ test_b/ under root/task."""
    folders = {name: root / task / name for name in
               ("unpaired_a", "unpaired_b", "paired_a", "paired_b", "test_a", "test_b")}
    if all(f.is_dir() for f in folders.values()):
        return folders
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    count = 0
    for p, (name, photo) in enumerate(photos):
        held_out = p % 4 == 3
        for t, tile in enumerate(tiles_of(photo, size)):
            stem, truth = f"{name}-{t:02d}.png", grade(task, tile)
            if held_out:
                tile.save(folders["test_a"] / stem)
                truth.save(folders["test_b"] / stem)
                continue
            tile.save(folders["paired_a"] / stem)
            truth.save(folders["paired_b"] / stem)
            # unpaired: alternate tiles go to A or B, so no B tile is the grade of an A tile
            (tile if count % 2 == 0 else truth).save(
                folders["unpaired_a" if count % 2 == 0 else "unpaired_b"] / stem)
            count += 1
    return folders


# -- training and scoring ------------------------------------------------------------------------
def train(run: Path, folders: dict[str, Path], model: str, preset: str, args,
          extra: tuple[str, ...] = (), steps: int | None = None) -> dict:
    """Train one run in its own process (one thread; ``extra``: more ``train`` options;
    ``steps``: a fixed count instead of the preset's budget); returns the wall time and the
    PSNR at its first checkpoint (a copy of the run folder taken as soon as it appears)."""
    side = "paired" if model == "pix2pix" else "unpaired"
    steps = steps or (args.tiny_steps if preset == "tiny" else args.fast_steps)
    budget = ["--steps", str(steps)] if steps else ["--minutes", str(args.minutes)]
    command = [sys.executable, "-m", "styletx.cli", "--quiet", "train",
               str(folders[f"{side}_a"]), str(folders[f"{side}_b"]), "--out", str(run),
               "--model", model, "--preset", preset, "--size", str(args.size), "--device", "cpu",
               "--threads", "1", "--workers", "0", "--seed", str(args.seed), *budget]
    command += [arg for value in args.set for arg in ("--set", value)] + list(extra)
    shutil.rmtree(run, ignore_errors=True)
    first = run.with_name(run.name + "-first")
    shutil.rmtree(first, ignore_errors=True)
    began = time.monotonic()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=copy_first_checkpoint, args=(run, first, process))
    watcher.start()
    _, errors = process.communicate()
    watcher.join()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {errors.strip()}")
    return {"seconds": round(time.monotonic() - began, 1),
            "first": first if first.exists() else None}


def copy_first_checkpoint(run: Path, first: Path, process: subprocess.Popen) -> None:
    while process.poll() is None:
        try:
            step = json.loads((run / "config.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = 0
        if step and (run / "model.safetensors").exists():
            first.mkdir(exist_ok=True)
            for name in ("config.json", "model.safetensors"):
                shutil.copy2(run / name, first / name)
            return
        time.sleep(0.2)


def score(run: Path, folders: dict[str, Path]) -> dict:
    """Mean PSNR and SSIM of the run's conversions of test_a against test_b, and the outputs."""
    from styletx.engine.convert import load_run
    from styletx.image.metrics import psnr, ssim

    model = load_run(run, device="cpu")
    psnrs, ssims, outputs = [], [], {}
    for path in sorted(folders["test_a"].glob("*.png")):
        x = np.asarray(Image.open(path).convert("RGB"))
        truth = np.asarray(Image.open(folders["test_b"] / path.name), np.float64) / 255
        y = np.asarray(model.convert_array(x), np.float64)
        y = np.round(np.clip(y, 0, 1) * 255) / 255  # 8 bits a channel, as `convert` saves it
        psnrs.append(psnr(y, truth))
        ssims.append(ssim(y, truth))
        outputs[path.name] = y
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)),
            "step": model.step, "outputs": outputs}


def baseline(folders: dict[str, Path]) -> dict:
    from styletx.image.metrics import psnr, ssim

    pairs = [(np.asarray(Image.open(p).convert("RGB"), np.float64) / 255,
              np.asarray(Image.open(folders["test_b"] / p.name), np.float64) / 255)
             for p in sorted(folders["test_a"].glob("*.png"))]
    return {"psnr": float(np.mean([psnr(x, t) for x, t in pairs])),
            "ssim": float(np.mean([ssim(x, t) for x, t in pairs])), "tiles": len(pairs)}


def run_one(task: str, model: str, preset: str, folders, args) -> dict:
    run = args.out / "runs" / f"{task}-{model}-{preset}{args.tag}"
    record = run / "benchmark.json"  # written when a run is trained and scored
    if args.reuse and record.is_file():
        trained = json.loads(record.read_text())
        first = run.with_name(run.name + "-first")
        trained["first"] = first if first.is_dir() else None
    else:
        trained = train(run, folders, model, preset, args)
        record.write_text(json.dumps({"seconds": trained["seconds"]}))
    result = score(run, folders)
    first = score(trained["first"], folders) if trained["first"] else None
    print(f"{task:10s} {model:8s} {preset:5s} PSNR {result['psnr']:6.2f} SSIM "
          f"{result['ssim']:.3f} (first checkpoint "
          f"{'-' if first is None else format(first['psnr'], '.2f')}) "
          f"{trained['seconds']:.0f} s, {result['step']} steps", flush=True)
    return {"task": task, "model": model, "preset": preset, "psnr": result["psnr"],
            "ssim": result["ssim"], "steps": result["step"], "seconds": trained["seconds"],
            "first_psnr": first and first["psnr"], "first_step": first and first["step"],
            "outputs": result["outputs"]}


# -- report ----------------------------------------------------------------------------------------
def save_grid(path: Path, folders, rows: list[dict]) -> None:
    """GRID_TILES test tiles, each a row: input | each run's output | truth, labelled."""
    names = sorted(p.name for p in folders["test_a"].glob("*.png"))
    names = names[:: max(1, len(names) // GRID_TILES)][:GRID_TILES]
    columns = ["input"] + [f"{r['model']} {r['preset']}" for r in rows] + ["truth"]
    tile = np.asarray(Image.open(folders["test_a"] / names[0])).shape[0]
    label = 14
    grid = Image.new("RGB", (tile * len(columns), label + tile * len(names)), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(columns):
        draw.text((c * tile + 2, 1), text, fill="black")
    for r, name in enumerate(names):
        images = [np.asarray(Image.open(folders["test_a"] / name).convert("RGB"))]
        images += [(np.clip(row["outputs"][name], 0, 1) * 255 + 0.5).astype(np.uint8)
                   for row in rows]
        images.append(np.asarray(Image.open(folders["test_b"] / name).convert("RGB")))
        for c, image in enumerate(images):
            grid.paste(Image.fromarray(image), (c * tile, label + r * tile))
    grid.save(path)


def table(results: list[dict], baselines: dict[str, dict], args) -> str:
    fast = f"--steps {args.fast_steps}" if args.fast_steps else f"--minutes {args.minutes}"
    lines = [f"{args.size} px, fast: {fast}, tiny: {args.tiny_steps} steps; "
             f"one thread per run, {args.jobs} runs at once",
             "", "| task | model | preset | PSNR dB | vs input | SSIM | first ckpt PSNR | steps "
             "| wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for task, base in baselines.items():
        lines.append(f"| {task} | (untouched input) | | {base['psnr']:.2f} | 0 | "
                     f"{base['ssim']:.3f} | | | |")
        for r in (r for r in results if r["task"] == task):
            first = "-" if r["first_psnr"] is None else f"{r['first_psnr']:.2f}"
            lines.append(f"| {task} | {r['model']} | {r['preset']} | {r['psnr']:.2f} | "
                         f"{r['psnr'] - base['psnr']:+.2f} | {r['ssim']:.3f} | {first} | "
                         f"{r['steps']} | {r['seconds']:.0f} |")
    lines += ["", "Mean gain over the untouched input on the global grades:", ""]
    for model in args.models:
        for preset in args.presets:
            gains = [r["psnr"] - baselines[r["task"]]["psnr"] for r in results
                     if r["model"] == model and r["preset"] == preset
                     and r["task"] in GLOBAL_TASKS]
            if gains:
                lines.append(f"- {model} {preset}: {np.mean(gains):+.2f} dB over "
                             f"{len(gains)} task(s)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--minutes", type=float, default=8.0, help="fast preset's budget")
    parser.add_argument("--fast-steps", type=int, default=None,
                        help="a fixed step count for the fast preset instead of --minutes "
                             "(to compare settings on a busy machine)")
    parser.add_argument("--tiny-steps", type=int, default=600)
    parser.add_argument("--size", type=int, default=64, help="training crop (pixels)")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the run folders' names")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a translator setting for every run (train --set), to try variants")
    parser.add_argument("--reuse", action="store_true",
                        help="score runs already trained under --out instead of training again "
                             "(to assemble one table and grids from several invocations)")
    parser.add_argument("--out", type=Path, default=Path("quality-benchmark"))
    args = parser.parse_args()
    args.tasks, args.models, args.presets = (v.split(",") for v in
                                             (args.tasks, args.models, args.presets))
    import torch

    torch.set_num_threads(1)
    photos = find_photos()
    print(f"{len(photos)} photographs; tasks {args.tasks}; models {args.models}; "
          f"presets {args.presets}", flush=True)
    data = {task: make_task_data(args.out / "data", task, photos, args.size) for task in args.tasks}
    baselines = {task: baseline(folders) for task, folders in data.items()}
    jobs = [(t, m, p) for t in args.tasks for m in args.models for p in args.presets]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, data[job[0]], args), jobs))
    for task in args.tasks:
        save_grid(args.out / f"grid-{task}.png", data[task],
                  [r for r in results if r["task"] == task])
    report = table(results, baselines, args)
    print(report)
    (args.out / "results.md").write_text(report + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"baselines": baselines, "runs": [{k: v for k, v in r.items() if k != "outputs"}
                                          for r in results]}, indent=1))


if __name__ == "__main__":
    main()
