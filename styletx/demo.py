"""Demo data with a known answer, generated offline, and the ``styletx demo`` run.

Domain A holds synthetic scenes (soft gradients with coloured shapes); domain B holds *other*
scenes of the same kind under a fixed colour transform (``winterize``). Because the transform is
known, held-out conversions can be scored against the truth: PSNR(converted, truth) must beat
PSNR(input, truth).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from styletx.image.metrics import psnr

log = logging.getLogger("styletx")
DEMO_MINUTES = 2.0  # the image part's time limit (train --minutes)
DEMO_STEPS = 600  # ... and its length: 25 s on 2 idle cores
# The fast preset's identity weight (0.5) was chosen on real photographs, against colour casts in
# long runs; on these flat synthetic scenes it holds the generator at the identity (15.5 dB ->
# 15.5 dB). At 0.2 a short run learns the transform (28.6 dB after 400 steps; 18.1 dB after a
# 2-minute, 2249-step run, which drifts).
DEMO_OVERRIDES = {"lambda_identity": 0.2}
DEMO_IMAGE_SIZE = 40  # close to the training scale (crops of 32 from images loaded at 36)
DEMO_CROP = 32


def winterize(rgb: np.ndarray) -> np.ndarray:
    """The hidden A→B transform on ``(H, W, 3)`` floats in [0, 1]: colder and paler colours."""
    mix = np.array([[0.45, 0.35, 0.20], [0.20, 0.60, 0.20], [0.15, 0.25, 0.75]])
    return np.clip(rgb @ mix.T * 0.85 + np.array([0.05, 0.10, 0.22]), 0, 1)


def make_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """One synthetic scene ``(size, size, 3)`` in [0, 1]: a gradient sky and a few shapes."""
    top, bottom = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    base = (top * (1 - ramp) + bottom * ramp) * np.ones((size, size, 3))
    img = Image.fromarray((base * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 7)):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=size / 96))
    return np.asarray(img, np.float32) / 255


def save_rgb(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)).save(path)


def make_image_dataset(root: Path, n_train: int = 48, n_test: int = 8, size: int = 64,
                       seed: int = 0) -> dict[str, Path]:
    """Write unpaired train folders ``a/`` and ``b/`` (disjoint scenes) and the held-out
    ``test_a/`` with its true answers in ``test_b/``; returns the four folders."""
    rng = np.random.default_rng(seed)
    folders = {name: root / name for name in ("a", "b", "test_a", "test_b")}
    for i in range(n_train):
        save_rgb(make_scene(rng, size), folders["a"] / f"scene{i:03d}.png")
        save_rgb(winterize(make_scene(rng, size)), folders["b"] / f"scene{i:03d}.png")
    for i in range(n_test):
        scene = make_scene(rng, size)
        save_rgb(scene, folders["test_a"] / f"held{i:03d}.png")
        save_rgb(winterize(scene), folders["test_b"] / f"held{i:03d}.png")
    return folders


def ink(rgb: np.ndarray) -> np.ndarray:
    """A paired task's hidden transform on ``(H, W, 3)`` floats in [0, 1]: ``winterize``d colours
    with dark outlines along the edges (a local, spatial change, not a per-pixel one)."""
    from scipy.ndimage import sobel

    gray = rgb @ np.array([0.299, 0.587, 0.114])
    edges = np.hypot(sobel(gray, axis=0), sobel(gray, axis=1))
    outline = np.clip(edges * 2.0, 0, 1)[:, :, None]
    return winterize(rgb) * (1 - 0.8 * outline)


def make_paired_image_dataset(root: Path, n_train: int = 48, n_test: int = 8, size: int = 64,
                              seed: int = 0) -> dict[str, Path]:
    """Paired folders: ``a/`` scenes and ``b/`` their ``ink`` versions under the same names, and
    held-out ``test_a/`` with its true answers in ``test_b/``; returns the four folders."""
    rng = np.random.default_rng(seed)
    folders = {name: root / name for name in ("a", "b", "test_a", "test_b")}
    for split, count, stem in (("", n_train, "scene"), ("test_", n_test, "held")):
        for i in range(count):
            scene = make_scene(rng, size)
            save_rgb(scene, folders[split + "a"] / f"{stem}{i:03d}.png")
            save_rgb(ink(scene), folders[split + "b"] / f"{stem}{i:03d}.png")
    return folders


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255


def score_folder(converted: Path, inputs: Path, truth: Path) -> tuple[float, float]:
    """Mean PSNR (dB) of the untouched inputs and of the conversions against the truth."""
    before, after = [], []
    for t in sorted(truth.glob("*.png")):
        before.append(psnr(load_rgb(inputs / t.name), load_rgb(t)))
        after.append(psnr(load_rgb(converted / t.name), load_rgb(t)))
    return float(np.mean(before)), float(np.mean(after))


def run_demo(out: Path, minutes: float = DEMO_MINUTES, steps: int | None = None,
             device: str = "auto") -> dict[str, object]:
    """Generate the demo folders, train the fast CycleGAN (``DEMO_OVERRIDES``) for ``steps``
    (DEMO_STEPS, stopped after ``minutes`` on a busy machine), convert the held-out scenes,
    score. The fast preset starts as the identity, so even a
    run cut short by a busy machine does not make the scenes worse."""
    from styletx.engine.convert import load_run
    from styletx.engine.training import TrainSettings, train

    data = {name: out / "data" / name for name in ("a", "b", "test_a", "test_b")}
    if not all(folder.is_dir() for folder in data.values()):
        log.info("writing demo images to %s", out / "data")
        data = make_image_dataset(out / "data", size=DEMO_IMAGE_SIZE)
    settings = TrainSettings(steps=steps or DEMO_STEPS, minutes=None if steps else minutes,
                             size=DEMO_CROP, device=device)
    train(data["a"], data["b"], out / "run", model="cyclegan", preset="fast",
          overrides=DEMO_OVERRIDES, settings=settings)
    report = load_run(out / "run", device=device).convert_files([data["test_a"]], out / "converted")
    before, after = score_folder(out / "converted", data["test_a"], data["test_b"])
    return {"run": out / "run", "converted": out / "converted", "samples": out / "run" / "samples",
            "files": len(report.converted), "psnr_before": before, "psnr_after": after}


DEMO_VOICES = Path(__file__).parent / "audio" / "demo_voices"  # two espeak-ng voices, see scripts/
VOICE_DEMO_MINUTES = 3.0  # the voice part's training budget (train --minutes)


def run_voice_demo(out: Path, minutes: float = VOICE_DEMO_MINUTES, steps: int | None = None,
                   device: str = "auto") -> dict[str, object]:
    """Train the default voice model's tiny preset (``match``) on the bundled voices (low male
    -> high female), convert a held-out sentence, write its audio and a spectrogram picture,
    and measure MCD and F0."""
    from styletx.audio.metrics import mcd, median_f0
    from styletx.engine.convert import load_run
    from styletx.engine.training import TrainSettings, train
    from styletx.image.previews import save_grid

    settings = TrainSettings(steps=steps, minutes=None if steps else minutes, device=device)
    train(DEMO_VOICES / "a", DEMO_VOICES / "b", out / "voice-run", preset="tiny",
          domain="audio", settings=settings)
    run = load_run(out / "voice-run", device=device)
    source_path = DEMO_VOICES / "test_a" / "held_00.flac"
    source = run.domain.load(source_path)
    converted = run.convert_sample(source, "a2b")
    out_audio = out / "voice-converted" / "held_00.flac"
    out_audio.parent.mkdir(parents=True, exist_ok=True)
    run.domain.save(converted, out_audio)
    # Input and converted spectrograms, each as its own side's encoder sees it.
    pictures = [[run.encoders["a"].encode(source).flip(-2) / 3],
                [run.encoders["b"].encode(converted).flip(-2) / 3]]
    save_grid(pictures, out_audio.with_suffix(".png"))
    target = run.domain.load(DEMO_VOICES / "test_b" / "held_00.flac")
    rate = source.rate
    return {
        "run": out / "voice-run", "audio": out_audio, "picture": out_audio.with_suffix(".png"),
        "mcd_before": mcd(source.wave, target.wave, rate),
        "mcd_after": mcd(converted.wave, target.wave, converted.rate),
        "f0_source": median_f0(source.wave, rate), "f0_converted": median_f0(converted.wave, rate),
        "f0_target": median_f0(target.wave, rate),
    }
