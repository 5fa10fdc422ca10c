"""Images per second converting a folder of 256 x 256 images on the CPU with the default CycleGAN.

styletx's batched conversion (``Run.convert_files``: inputs of one size translated
``--batch-size`` at a time while a background thread reads the next ones) against the reference
test script's way (pytorch-CycleGAN-and-pix2pix ``test.py``: load one image, run the generator,
save, next), measured in the same run on the same generator weights, in interleaved rounds of
two batches. The model is the default preset's (9-block ResNet generator, ngf 64) after one
training step: the architecture, not training, sets the time. The outputs of both are compared,
so both really do the same work.

On the CPU styletx limits a network call to ``apply.BATCH_ELEMENTS`` input pixels (one
256 x 256 image), because larger batches run slower there; the "forced" row lifts that limit and
translates ``--batch-size`` images a call, to show it. The last row is ``convert --precision
bf16`` (bf16 autocast; not the same arithmetic, so its output differences are printed).

    python benchmarks/convert_images.py [--n 32] [--size 256] [--batch-size 8] [--also-unbatched]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import styletx
from styletx.demo import make_image_dataset
from styletx.engine import apply


def reference_loop(generator: torch.nn.Module, files: list[Path], out: Path) -> dict[str, float]:
    """One image at a time, as the reference's test.py does it: read and normalise to [-1, 1]
    (ToTensor + Normalize(0.5, 0.5)), generator under no_grad, back to 8 bits (rounded, as
    styletx does; the reference truncates), save. Returns the seconds spent in each part."""
    out.mkdir(parents=True, exist_ok=True)
    parts = {"read": 0.0, "generator": 0.0, "write": 0.0}
    for path in files:
        t0 = time.perf_counter()
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), np.float32) / 255
        # torchvision's ToTensor makes (C, H, W) contiguous; a permuted view would run the
        # whole network in channels-last, which is slower on this CPU.
        x = ((torch.from_numpy(pixels).permute(2, 0, 1).contiguous() - 0.5) / 0.5)[None]
        t1 = time.perf_counter()
        with torch.no_grad():
            y = generator(x)
        t2 = time.perf_counter()
        values = (y[0].permute(1, 2, 0).clamp(-1, 1).numpy() + 1) / 2
        Image.fromarray(np.round(values * 255).astype(np.uint8)).save(out / path.name)
        t3 = time.perf_counter()
        parts["read"] += t1 - t0
        parts["generator"] += t2 - t1
        parts["write"] += t3 - t2
    return parts


def max_difference(a: Path, b: Path, names: list[str]) -> int:
    worst = 0
    for name in names:
        with Image.open(a / name) as x, Image.open(b / name) as y:
            diff = np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16))
            worst = max(worst, int(diff.max()))
    return worst


def psnr(a: Path, b: Path, names: list[str]) -> float:
    """PSNR in dB of the 8-bit images in ``b`` against those in ``a``, over all of them."""
    squared = [np.mean((pixels(a / n) - pixels(b / n)) ** 2) for n in names]
    return float(10 * np.log10(255**2 / max(np.mean(squared), 1e-12)))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img, np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images to convert (default 32)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=8, help="styletx's batch (default 8)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core)")
    parser.add_argument("--also-unbatched", action="store_true",
                        help="also time styletx at --batch-size 1 (reading ahead, no batching)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="convert-images-"))
    try:
        data = make_image_dataset(work / "data", n_train=4, n_test=args.n, size=args.size)
        # One step on 64-pixel crops: the run holds the default preset's full-size networks.
        styletx.train(data["a"], data["b"], work / "run", preset="default",
                      settings=styletx.TrainSettings(steps=1, size=64, device="cpu",
                                                     progress=False))
        run = styletx.load_run(work / "run", device="cpu")
        run_bf16 = styletx.load_run(work / "run", device="cpu", precision="bf16")
        generator = run.translator.G_A  # a2b, in eval mode: the same weights for both sides
        files = sorted(data["test_a"].glob("*.png"))
        names = [f.name for f in files]
        c = run.translator.config
        params = sum(p.numel() for p in generator.parameters())

        # Warm up both paths (oneDNN primitives for this shape, first-call allocations).
        reference_loop(generator, files[:1], work / "warm-ref")
        run.convert_files(files[:2], work / "warm", batch_size=2)
        run_bf16.convert_files(files[:2], work / "warm", batch_size=2)

        # Interleaved rounds (two batches each), in alternating order: other processes'
        # load on a shared machine then falls on every method alike.
        methods = {"reference": None, "batched": args.batch_size, "forced": args.batch_size,
                   "bf16": args.batch_size}
        if args.also_unbatched:
            methods["single"] = 1
        seconds = dict.fromkeys(methods, 0.0)
        limits = dict(apply.BATCH_ELEMENTS)
        lifted = dict.fromkeys(limits, 10**12)
        parts = {"read": 0.0, "generator": 0.0, "write": 0.0}
        rounds = [files[i : i + 2 * args.batch_size]
                  for i in range(0, len(files), 2 * args.batch_size)]
        for k, chunk in enumerate(rounds):
            for name in (list(methods) if k % 2 == 0 else list(methods)[::-1]):
                start = time.perf_counter()
                if name == "reference":
                    for part, t in reference_loop(generator, chunk, work / name).items():
                        parts[part] += t
                else:
                    apply.BATCH_ELEMENTS = lifted if name == "forced" else limits
                    report = (run_bf16 if name == "bf16" else run).convert_files(
                        chunk, work / name, batch_size=methods[name])
                    apply.BATCH_ELEMENTS = limits
                    assert len(report.converted) == len(chunk) and not report.failed
                seconds[name] += time.perf_counter() - start
        t_ref, t_batched, t_single = (seconds["reference"], seconds["batched"],
                                      seconds.get("single"))
        t_forced, t_bf16 = seconds["forced"], seconds["bf16"]
        per_call = max(1, min(args.batch_size, run._batch_elements() // args.size**2))
        diff = [max_difference(work / "reference", work / name, names)
                for name in ("batched", "forced", "bf16")]
        bf16_psnr = psnr(work / "reference", work / "bf16", names)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.n
    print(f"{n} images {args.size}x{args.size} RGB PNG; default CycleGAN generator (ResNet, "
          f"{c.n_blocks} blocks, ngf {c.ngf}, {c.upsample} up-sampling, {params / 1e6:.2f} M "
          f"parameters), a2b")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); Python {platform.python_version()}")
    print()
    print(f"{'method':<52} {'total s':>8} {'img/s':>7} {'ratio':>6}")
    rows = [("reference loop (load one, run, save, next)", t_ref)]
    if t_single is not None:
        rows.append(("styletx convert --batch-size 1 (reading ahead)", t_single))
    rows.append((f"styletx convert --batch-size {args.batch_size} ({per_call} a call)",
                 t_batched))
    rows.append((f"styletx, {args.batch_size} a call forced (no size limit)", t_forced))
    rows.append((f"styletx convert --batch-size {args.batch_size} --precision bf16", t_bf16))
    for name, seconds in rows:
        print(f"{name:<52} {seconds:8.2f} {n / seconds:7.3f} {t_ref / seconds:5.2f}x")
    print()
    print(f"reference loop parts: read {parts['read'] * 1000 / n:.1f} ms, generator "
          f"{parts['generator'] * 1000 / n:.1f} ms, write {parts['write'] * 1000 / n:.1f} ms "
          f"per image")
    print(f"largest pixel difference, styletx vs reference: {diff[0]}, forced batches vs "
          f"reference: {diff[1]} (of 255)")
    print(f"bf16 vs the reference's fp32: largest pixel difference {diff[2]} (of 255), "
          f"PSNR {bf16_psnr:.1f} dB")
    ratio = t_ref / t_batched
    print(f"-> styletx convert {ratio:.2f}x the reference's images per second; target >= 2x: "
          f"{'met' if ratio >= 2 else 'not met'}")
    print(f"load average before / after: {' '.join(f'{v:.2f}' for v in load_before)} / "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"date: {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
