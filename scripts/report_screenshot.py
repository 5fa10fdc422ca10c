"""Open a run's report.html in headless Chromium, save a screenshot and check that its pictures
rendered: the page is shot twice, as it is and with its pictures hidden (the layout kept), and
the pictures must change a good part of the area they take up (a blank or broken picture
changes next to nothing); the loss curves' colour must be on the page.

    python scripts/report_screenshot.py RUN [--out shot.png]

Needs Chromium (Debian: apt-get install chromium). Exit 0: rendered; 1: blank or missing
parts; 2: no Chromium or no report.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CURVE_RGB = (31, 119, 180)  # matplotlib's tab:blue, the colour of the report's loss curves
MIN_CURVE_PIXELS = 100  # a few short curves at the report's 80 dpi have more
MIN_CHANGED = 0.15  # of the pictures' area (mostly-white plots change the least, ~20 %)
WIDTH, CONTENT_WIDTH, TEXT_HEIGHT = 1200, 1130, 2500  # pixels: window, page body, not pictures
IMAGE = re.compile(r'<img src="([^"?]+)')


def find_browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def screenshot(page: Path, out: Path, height: int) -> Path:
    """A screenshot of the top ``height`` pixels of ``page``, taken by headless Chromium."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no cache, no first run
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}",
             "--virtual-time-budget=5000", f"--screenshot={out}", page.resolve().as_uri()],
            check=True, capture_output=True, timeout=120)
    return out


def pictures_area(page: Path) -> tuple[int, int]:
    """(the area, the height) the page's pictures take up, as the page's CSS scales them."""
    area = height = 0
    for link in IMAGE.findall(page.read_text()):
        width, tall = Image.open(page.parent / link).size
        scale = min(1.0, CONTENT_WIDTH / width)
        area += int(width * scale * tall * scale)
        height += int(tall * scale) + 40
    return area, height


def check(run: Path, out: Path) -> dict[str, float]:
    """Shoot ``run``'s report with and without its pictures; what the pictures changed."""
    page = run / "report.html"
    area, height = pictures_area(page)
    hidden = run / ".report-hidden.html"  # beside it: the same links and styles
    hidden.write_text(page.read_text().replace(
        "</head>", "<style>img { visibility: hidden; }</style></head>", 1))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bare = screenshot(hidden, Path(tmp) / "bare.png", height + TEXT_HEIGHT)
            screenshot(page, out, height + TEXT_HEIGHT)
            shot, without = (np.asarray(Image.open(p).convert("RGB")).astype(int)
                             for p in (out, bare))
    finally:
        hidden.unlink(missing_ok=True)
    changed = int((np.abs(shot - without).max(axis=2) > 8).sum())
    curve = int((np.abs(shot - CURVE_RGB).max(axis=2) <= 12).sum())
    return {"pictures_area": area, "changed": changed,
            "changed_fraction": changed / area if area else 0.0, "curve_pixels": curve}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: RUN/report/shot.png")
    args = parser.parse_args()
    page = args.run / "report.html"
    if not page.is_file():
        print(f"{page}: no report (styletx report {args.run} writes it)", file=sys.stderr)
        return 2
    out = args.out or args.run / "report" / "shot.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        seen = check(args.run, out)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    ok = (seen["changed_fraction"] >= MIN_CHANGED and seen["curve_pixels"] >= MIN_CURVE_PIXELS)
    print(f"{out}: the pictures changed {seen['changed_fraction']:.0%} of their area "
          f"(need {MIN_CHANGED:.0%}), {seen['curve_pixels']} pixels of curve (need "
          f"{MIN_CURVE_PIXELS}): " + ("rendered" if ok else "BLANK OR MISSING PARTS"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
