"""The VAE/GAN latent tools on real photographs: outlier scores, sampling, traversal, --balance.

    python benchmarks/latent.py                       # both presets, ~12 min on 2 cores
    python benchmarks/latent.py --presets fast --minutes 8
    python benchmarks/latent.py --balance             # the --balance experiment (20 more runs)
    python benchmarks/latent.py --presets "" --balance --rare-grade cyanotype \
        --balance-arms plain,elbo,oracle --balance-seeds 0,1   # the rare kind graded apart

Domain A is tiles of Debian's MATE nature photographs (``apt-get install mate-backgrounds``),
domain B their sepia grade (the other half of the training tiles); every fourth photograph is
held out. A vaegan is trained per preset (``tiny``: --tiny-steps steps, ``fast``: --minutes of
wall clock, one thread each) and ``styletx.tools.latent.score`` scores, against side A:

    in-domain   the held-out nature tiles
    noise       uniform RGB noise                          flat      one random colour per tile
    documents   scikit-image's page.png and text.png       drawings  MATE's abstract backgrounds
    objects     scikit-image's colour photographs (people, a cat, coffee, a rocket, a motorcycle)
    blur        held-out tiles, Gaussian blur of radius 4  jpeg      held-out tiles, JPEG quality 5
    inverted    held-out tiles with inverted colours

Reported: the ROC AUC of the score for each kind against the in-domain tiles (1: every
outlier scores above every in-domain tile; 0.5: a coin). ``objects`` is another photo category
of the same kind of content (objects in daylight), the hardest case; the target (mean >= 0.95,
no kind below 0.85) is over the other kinds. Also a distribution distance of ``styletx sample``'s
images to the held-out photos, against noise and pixel-shuffled photos (``sample_distance``),
and, with --balance, PSNR on a rare and a common kind of photo without and with ``--balance``
(latent or ELBO rarity, flattened or not), for an oracle that sees the rare kind a third of
the time, and for a null arm that draws uniformly through the weighted sampler (how far a run
moves when only its draws change), at a fixed step count over several training seeds, with
the conversions' chroma (how much colour they keep). With --rare-grade, B's rare tiles
(and their truths) get a grade of their own instead of the common kind's sepia, so the rare
kind has a mapping to learn from its few examples.
Writes results.json, results.md and grids under --out.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))
# the quality benchmark's parts
from quality import SKIMAGE_PHOTOS, baseline, grade, square_tiles, train  # noqa: E402
from quality import score as conversion_score  # noqa: E402

MATE = Path("/usr/share/backgrounds/mate")
OUTLIER_KINDS = ("noise", "flat", "documents", "drawings", "blur", "jpeg", "inverted")
HARD_KINDS = ("objects",)  # reported, not in the target's mean
TILE = 96  # tile side in pixels; training crops --size (64) of them


# -- photographs and tiles -------------------------------------------------------------------------
def open_rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def tiles(photo: Image.Image, shorter: int) -> list[Image.Image]:
    """TILE-px tiles of the photo scaled to a shorter side of ``shorter`` pixels."""
    return square_tiles(photo, shorter, TILE)


def skimage_images(names) -> list[Image.Image]:
    try:
        import skimage.data
    except ImportError:
        sys.exit("pip install scikit-image: its bundled photographs are the documents and "
                 "objects kinds")
    folder = Path(skimage.data.__file__).parent
    return [open_rgb(folder / name) for name in names]


def nature_photos() -> list[Image.Image]:
    photos = [open_rgb(p) for p in sorted((MATE / "nature").glob("*.jpg"))]
    if len(photos) < 8:
        sys.exit("need Debian's MATE nature photographs: apt-get install mate-backgrounds")
    return photos


def corrupt(kind: str, tile: Image.Image) -> Image.Image:
    if kind == "blur":
        return tile.filter(ImageFilter.GaussianBlur(4))
    if kind == "inverted":
        return Image.fromarray(255 - np.asarray(tile))
    if kind == "jpeg":
        buffer = io.BytesIO()
        tile.save(buffer, "JPEG", quality=5)
        return open_rgb(buffer)
    raise ValueError(kind)


def outlier_tiles(kind: str, held_out: list[Image.Image], rng) -> list[Image.Image]:
    if kind == "noise":
        return [Image.fromarray(rng.integers(0, 256, (TILE, TILE, 3), dtype=np.uint8))
                for _ in range(48)]
    if kind == "flat":
        return [Image.new("RGB", (TILE, TILE), tuple(int(v) for v in rng.integers(0, 256, 3)))
                for _ in range(48)]
    if kind == "documents":
        return [t for page in skimage_images(["page.png", "text.png"]) for t in tiles(page, 192)]
    if kind == "drawings":
        return [t for p in sorted((MATE / "abstract").glob("*")) for t in tiles(open_rgb(p), 192)]
    if kind == "objects":
        return [t for p in skimage_images(SKIMAGE_PHOTOS) for t in tiles(p, 192)]
    return [corrupt(kind, t) for t in held_out]


def save_all(folder: Path, images: list[Image.Image]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / f"{i:03d}.png")
    return folder


def make_data(root: Path, seed: int) -> dict[str, Path]:
    """Folders train_a/ train_b/ (unpaired: alternate tiles, B graded sepia), test_a/ and one
    folder per outlier kind, under root; made once."""
    names = ["train_a", "train_b", "test_a", *OUTLIER_KINDS, *HARD_KINDS]
    folders = {name: root / name for name in names}
    if (root / "done").is_file():
        return folders
    shutil.rmtree(root, ignore_errors=True)
    train_tiles, held_out = [], []
    for p, photo in enumerate(nature_photos()):
        (held_out if p % 4 == 3 else train_tiles).extend(tiles(photo, 4 * TILE))
    save_all(folders["train_a"], train_tiles[0::2])
    save_all(folders["train_b"], [grade("sepia", t) for t in train_tiles[1::2]])
    save_all(folders["test_a"], held_out)
    rng = np.random.default_rng(seed)
    for kind in (*OUTLIER_KINDS, *HARD_KINDS):
        save_all(folders[kind], outlier_tiles(kind, held_out, rng))
    (root / "done").write_text("")
    return folders


# -- outlier scores --------------------------------------------------------------------------------
def auc(inliers: list[float], outliers: list[float]) -> float:
    """ROC AUC of "score above" as an outlier test: P(outlier > inlier), ties counted half."""
    a, b = np.asarray(inliers)[:, None], np.asarray(outliers)[None, :]
    return float(((b > a).sum() + 0.5 * (b == a).sum()) / (a.size * b.size))


def outlier_aucs(run: Path, folders: dict[str, Path]) -> dict:
    """Every kind's AUC against the held-out in-domain tiles, with the score and flag counts."""
    from styletx.engine.convert import load_run
    from styletx.tools.latent import score

    model = load_run(run, device="cpu")
    reports = {kind: score(model, [folders[kind]], side="a").scores
               for kind in ("test_a", *OUTLIER_KINDS, *HARD_KINDS)}
    inliers = [s.score for s in reports["test_a"]]
    result = {"in-domain flagged": f"{sum(s.flagged for s in reports['test_a'])}/{len(inliers)}"}
    for kind in (*OUTLIER_KINDS, *HARD_KINDS):
        result[kind] = {"auc": round(auc(inliers, [s.score for s in reports[kind]]), 3),
                        "flagged": f"{sum(s.flagged for s in reports[kind])}/{len(reports[kind])}"}
    result["mean auc"] = round(float(np.mean([result[k]["auc"] for k in OUTLIER_KINDS])), 3)
    result["scores"] = {kind: sorted((s.score, s.path.name) for s in found)
                        for kind, found in reports.items()}
    return result


# -- samples against real photographs --------------------------------------------------------------
def small_features(x) -> np.ndarray:
    """``(N, 3, H, W)`` tensors -> ``(N, 9)``: each channel's mean and spread (the colour) and
    ``image_statistics`` (fine and coarse detail, axis-aligned detail): features that need no
    downloaded network."""
    from styletx.tools.latent import image_statistics

    flat = x.flatten(2)
    return np.concatenate([flat.mean(2).numpy(), flat.std(2).numpy(),
                           image_statistics(x).numpy()], 1)


def mmd(x: np.ndarray, y: np.ndarray, scale: np.ndarray) -> float:
    """Unbiased squared maximum mean discrepancy between two sets of feature rows, with a
    Gaussian kernel on features divided by ``scale``, bandwidth the median distance."""
    x, y = x / scale, y / scale
    both = np.concatenate([x, y])
    d2 = ((both[:, None] - both[None]) ** 2).sum(-1)
    k = np.exp(-d2 / np.median(d2[d2 > 0]))
    n = len(x)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
                 + (kyy.sum() - np.trace(kyy)) / (len(y) * (len(y) - 1)) - 2 * kxy.mean())


def sample_distance(run_path: Path, folders: dict[str, Path], n: int = 64, seed: int = 0) -> dict:
    """MMD of side A's samples to the held-out photos' crops (same size as training crops),
    beside the same for the training photos (real against real: the floor), for their pixels
    shuffled (the colours without the structure) and for uniform noise. Samples drawn from the
    prior N(0, I) and from the Gaussian field fitted to the training posteriors."""
    import torch

    from styletx.engine.convert import load_run
    from styletx.tools.latent import latent_draws, load_training_statistics

    run = load_run(run_path, device="cpu")
    size = run.config.train.size

    def crops(folder: Path):
        out = []
        for path in sorted(folder.glob("*.png")):
            prepared = run.domain.prepare_for_training(run.domain.load(path), size)
            x = run.encoders["a"].encode(prepared)
            top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
            out.append(x[:, top : top + size, left : left + size])
        return torch.stack(out).float()

    held, training = crops(folders["test_a"]), crops(folders["train_a"])
    generator = torch.Generator().manual_seed(seed)
    mu, _ = run.translator.encode_latent(held[:1], "a")
    stats = load_training_statistics(run_path)["a"]
    sets = {
        "training photos (floor)": training,
        "samples, prior N(0, I) (sample --prior)": run.translator.decode_latent(
            torch.randn((n, *mu.shape[1:]), generator=generator), "a", size=(size, size)),
        "samples, fitted field (sample)": run.translator.decode_latent(
            latent_draws(stats, n, tuple(mu.shape[-2:]), generator), "a", size=(size, size)),
        "held-out photos, pixels shuffled": torch.stack([
            x.flatten(1)[:, torch.randperm(size * size, generator=generator)].view_as(x)
            for x in held]),
        "uniform noise": torch.rand((n, 3, size, size), generator=generator) * 2 - 1,
    }
    reference = small_features(held)
    scale = reference.std(0) + 1e-6
    return {name: round(mmd(small_features(x.clamp(-1, 1)), reference, scale), 4)
            for name, x in sets.items()}


# -- --balance on a skewed set ---------------------------------------------------------------------
RARE_TRAIN = ("astronaut.png", "chelsea.png", "coffee.png")  # the rare kind's training photos
RARE_TEST = ("rocket.jpg", "motorcycle_left.png")  # ... and its held-out ones
RARE_KINDS = ("people", "micrograph")  # --rare-kind


def rare_tiles(kind: str) -> tuple[list[Image.Image], list[Image.Image]]:
    """The rare kind's training and held-out tiles. ``people``: scikit-image's photographs of
    people, a cat, a cup, which a small model hardly tells from the nature photos;
    ``micrograph``: its immunohistochemistry micrograph (blue-purple and brown stains, colours
    the nature photos lack), scaled to 480 px: the top two rows of tiles train, the other three
    are held out."""
    if kind == "people":
        return ([t for photo in skimage_images(RARE_TRAIN) for t in tiles(photo, 3 * TILE)],
                [t for photo in skimage_images(RARE_TEST) for t in tiles(photo, 3 * TILE)])
    grid = tiles(skimage_images(("ihc.png",))[0], 5 * TILE)  # 5 x 5, row by row
    return grid[:10], grid[10:]


def make_skewed_data(root: Path, folders: dict[str, Path], rare_grade: str = "sepia",
                     rare_kind: str = "people") -> dict[str, Path]:
    """train_a/ train_b/: the nature tiles of ``folders`` plus a rare kind (``rare_tiles``,
    about 5 % of each side), B's nature tiles graded sepia and its rare ones ``rare_grade``
    (another grade: a mapping of their own, which the model must learn from the few rare
    tiles); test_common/ test_rare/ and their truths test_common_b/ test_rare_b/. Made once."""
    names = ("train_a", "train_b", "test_common", "test_common_b", "test_rare", "test_rare_b")
    skewed = {name: root / name for name in names}
    if (root / "done").is_file():
        return skewed
    shutil.rmtree(root, ignore_errors=True)
    common_a = [open_rgb(p) for p in sorted(folders["train_a"].glob("*.png"))]
    common_b = [open_rgb(p) for p in sorted(folders["train_b"].glob("*.png"))]  # graded
    rare, rare_test = rare_tiles(rare_kind)
    count = round(0.05 / 0.95 * len(common_a))
    rare_a, rare_b = rare[0::2][:count], rare[1::2][:count]
    save_all(skewed["train_a"], common_a + rare_a)
    save_all(skewed["train_b"], common_b + [grade(rare_grade, t) for t in rare_b])
    held = [open_rgb(p) for p in sorted(folders["test_a"].glob("*.png"))]
    save_all(skewed["test_common"], held)
    save_all(skewed["test_common_b"], [grade("sepia", t) for t in held])
    save_all(skewed["test_rare"], rare_test)
    save_all(skewed["test_rare_b"], [grade(rare_grade, t) for t in rare_test])
    (root / "done").write_text("")
    return skewed


BALANCE_ARMS = {  # the --balance experiment's runs: label -> (run folder, extra train options)
    "no balance": ("plain", ()),
    "--balance (by the ELBO, the default)": ("elbo", ("--balance",)),
    "--balance --balance-share 0.5": ("elbo-half", ("--balance", "--balance-share", "0.5")),
    "--balance --balance-share 0 (uniform draws by another route: the seed noise)": (
        "null", ("--balance", "--balance-share", "0")),
    "--balance --balance-by latent": ("latent", ("--balance", "--balance-by", "latent")),
    "--balance --balance-by latent --balance-min-effective 0": (
        "latent-sharp", ("--balance", "--balance-by", "latent", "--balance-min-effective", "0")),
    "oracle (rare tiles copied 10x)": ("oracle", ()),
}
ARM_NAMES = [name for name, _ in BALANCE_ARMS.values()]  # what --balance-arms names
ORACLE_COPIES = 10  # the oracle's copies of each rare training tile: a third of the draws


def make_oracle_data(skewed: dict[str, Path], common: dict[str, int],
                     root: Path) -> dict[str, Path]:
    """The skewed training folders with every rare tile (those after the first ``common[side]``)
    copied ORACLE_COPIES times: what ideal balancing could do, with no re-weighting. Made
    once."""
    folders = {side: root / side for side in ("train_a", "train_b")}
    if (root / "done").is_file():
        return folders
    shutil.rmtree(root, ignore_errors=True)
    for side, folder in folders.items():
        shutil.copytree(skewed[side], folder)
        files = sorted(folder.glob("*.png"))
        for path in files[common[side]:]:
            for k in range(1, ORACLE_COPIES):
                shutil.copy(path, folder / f"{path.stem}_{k}.png")
    (root / "done").write_text("")
    return folders


def chroma(images) -> float:
    """How colourful ``(H, W, 3)`` images in [0, 1] are: the mean absolute difference between
    each channel and the pixel's gray (0 for a gray image). The --balance experiment reports it
    for the truths and the conversions, as a model that keeps some of its input's colours where
    the grade removes them loses PSNR on the common kind."""
    return float(np.mean([np.abs(y - y.mean(2, keepdims=True)).mean() for y in images]))


def balance_experiment(args, folders: dict[str, Path]) -> dict:
    """The fast vaegan on the skewed set (B's rare kind graded --rare-grade), --balance-steps
    steps, for each of the BALANCE_ARMS named by --balance-arms and each of --balance-seeds
    (two runs at a time, one thread each): PSNR against the true grade on held-out common and
    rare photos."""
    own = "" if args.rare_grade == "sepia" else f"-{args.rare_grade}"  # the folders' suffix
    own += "" if args.rare_kind == "people" else f"-{args.rare_kind}"
    skewed = make_skewed_data(args.out / f"skewed{own}", folders, args.rare_grade, args.rare_kind)
    common = {side: len(list(folders[side].glob("*.png"))) for side in ("train_a", "train_b")}
    oracle = make_oracle_data(skewed, common, args.out / f"skewed{own}-oracle")
    tests = {kind: {"test_a": skewed[f"test_{kind}"], "test_b": skewed[f"test_{kind}_b"]}
             for kind in ("common", "rare")}
    untouched: dict = {}
    for kind, test in tests.items():  # PSNR of the inputs, chroma of the truths
        truths = (np.asarray(open_rgb(p), np.float64) / 255 for p in test["test_b"].glob("*.png"))
        untouched |= {kind: round(baseline(test)["psnr"], 2),
                      f"{kind} chroma": round(chroma(truths), 4)}
    result: dict = {"untouched": untouched}
    chosen = args.balance_arms.split(",")
    arms = [arm for arm, (name, _) in BALANCE_ARMS.items() if name in chosen]
    jobs = [(arm, seed) for seed in args.balance_seeds.split(",") for arm in arms]

    def one(job: tuple[str, str]) -> None:
        arm, seed = job
        name, options = BALANCE_ARMS[arm]
        run = args.out / "runs" / f"skewed{own}-{name}-s{seed}"
        data = oracle if name == "oracle" else skewed
        if not (args.reuse and (run / "latent.json").is_file()):
            train(run, {"unpaired_a": data["train_a"], "unpaired_b": data["train_b"]},
                  "vaegan", "fast", argparse.Namespace(**{**vars(args), "seed": int(seed)}),
                  options, steps=args.balance_steps)
        scores = {}
        for kind, f in tests.items():
            converted = conversion_score(run, f)
            scores[kind] = round(converted["psnr"], 2)
            scores[f"{kind} chroma"] = round(chroma(converted["outputs"].values()), 4)
        result.setdefault(arm, {})[f"seed {seed}"] = scores
        print(arm, seed, scores, flush=True)

    with ThreadPoolExecutor(2) as pool:  # one thread each
        list(pool.map(one, jobs))
    return result


# -- pictures and the report -----------------------------------------------------------------------
def save_pictures(run: Path, folders: dict[str, Path], scores: dict, out: Path) -> None:
    """OUT/samples-PRESET.png (fitted field, then --prior), OUT/traverse-PRESET.png (the
    default channels on the first held-out photo) and OUT/typical-PRESET.png (the 8 most
    typical held-out photos by score, then the 8 least)."""
    from styletx.engine.convert import load_run
    from styletx.tools import latent

    model, name = load_run(run, device="cpu"), run.name
    work = out / "work"
    for prior, tag in ((False, ""), (True, "-prior")):
        written = latent.sample(model, "a", 16, work / f"samples{tag}", prior=prior)
        shutil.copy(written[0], out / f"samples-{name}{tag}.png")
    photo = sorted(folders["test_a"].glob("*.png"))[0]
    walked = latent.traverse(model, photo, None, work / "traverse", steps=7)
    shutil.copy(walked[-1], out / f"traverse-{name}.png")
    ranked = [folders["test_a"] / file for _, file in scores["test_a"]]
    rows = [ranked[:8], ranked[-8:]]
    grid = Image.new("RGB", (8 * TILE, 2 * TILE), "white")
    for r, row in enumerate(rows):
        for c, path in enumerate(row):
            grid.paste(open_rgb(path), (c * TILE, r * TILE))
    grid.save(out / f"typical-{name}.png")


def report(results: dict) -> str:
    """results.md: AUC per kind and preset, the sample distances, the --balance table."""
    presets = [p for p in results if p != "balance"]
    kinds = [*OUTLIER_KINDS, *HARD_KINDS]
    lines = []
    if presets:  # none with --presets "" (the --balance experiment alone)
        lines += ["| preset | " + " | ".join(kinds) + " | mean (w/o objects) | held-out flagged |",
                  "|---" * (len(kinds) + 3) + "|"]
        for p in presets:
            o = results[p]["outliers"]
            lines.append(f"| {p} | " + " | ".join(f"{o[k]['auc']:.3f}" for k in kinds)
                         + f" | {o['mean auc']:.3f} | {o['in-domain flagged']} |")
        distances = results[presets[0]]["sample MMD"]
        lines += ["", "| preset | " + " | ".join(distances) + " |",
                  "|---" * (len(distances) + 1) + "|"]
        for p in presets:
            lines.append(f"| {p} | " + " | ".join(f"{v:.3f}" for v in
                                                   results[p]["sample MMD"].values()) + " |")
    if "balance" in results:
        b = results["balance"]
        lines += ["", "| fast vaegan, skewed set | seed | common PSNR dB | rare PSNR dB "
                  "| common chroma | rare chroma |", "|---|---|---|---|---|---|"]
        rows = [("untouched (chroma: the truths')", "", b["untouched"])]
        rows += [(arm, seed, v) for arm in BALANCE_ARMS if arm in b
                 for seed, v in sorted(b[arm].items())]
        columns = (("common", 2), ("rare", 2), ("common chroma", 3), ("rare chroma", 3))
        for arm, seed, v in rows:  # chroma blank in results from before it was measured
            cells = [f"{v[key]:.{digits}f}" if key in v else "" for key, digits in columns]
            lines.append(f"| {arm} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny,fast")
    parser.add_argument("--minutes", type=float, default=8.0, help="fast preset's budget")
    parser.add_argument("--tiny-steps", type=int, default=600)
    parser.add_argument("--size", type=int, default=64, help="training crop (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--reuse", action="store_true", help="score runs already trained")
    parser.add_argument("--balance", action="store_true",
                        help="also the --balance experiment (5 fast runs per seed)")
    parser.add_argument("--balance-steps", type=int, default=1000)
    parser.add_argument("--balance-seeds", default="0,1,2,3")
    parser.add_argument("--balance-arms", default=",".join(ARM_NAMES),
                        help="the runs of the --balance experiment, by folder name")
    parser.add_argument("--rare-grade", default="sepia",
                        choices=("sepia", "cyanotype", "split_tone"),
                        help="--balance: the grade of B's rare kind (sepia: the common kind's)")
    parser.add_argument("--rare-kind", default="people", choices=RARE_KINDS,
                        help="--balance: the rare kind's photos (see rare_tiles)")
    parser.add_argument("--out", type=Path, default=Path("latent-benchmark"))
    args = parser.parse_args()
    unknown = set(args.balance_arms.split(",")) - set(ARM_NAMES)
    if unknown:
        parser.error(f"--balance-arms: no arm {', '.join(sorted(unknown))}")
    import torch

    torch.set_num_threads(1)
    folders = make_data(args.out / "data", args.seed)
    print({k: len(list(v.glob("*.png"))) for k, v in folders.items()}, flush=True)
    results: dict = {}
    for preset in filter(None, args.presets.split(",")):  # --presets "": --balance only
        run = args.out / "runs" / preset
        if not (args.reuse and (run / "latent.json").is_file()):
            print(train(run, {"unpaired_a": folders["train_a"], "unpaired_b": folders["train_b"]},
                        "vaegan", preset, args), flush=True)
        outliers = outlier_aucs(run, folders)
        save_pictures(run, folders, outliers.pop("scores"), args.out)
        results[preset] = {"outliers": outliers, "sample MMD": sample_distance(run, folders)}
        print(preset, json.dumps(results[preset]), flush=True)
    if args.balance:
        results["balance"] = balance_experiment(args, folders)
    text = report(results)
    print(text)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
