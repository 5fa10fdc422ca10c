"""Preview grids: rows of tensors ``(C, H, W)`` in [-1, 1] as one PNG picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from styletx.contract.files import atomic_path

__all__ = ["save_grid", "to_picture", "MIN_TILE"]

MIN_TILE = 128  # small training crops are enlarged (nearest) so a preview can be looked at


def to_picture(x: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [-1, 1] -> uint8 ``(H, W, 3)``; 3 channels as colour, else channel 0."""
    x = x.detach().float().cpu().nan_to_num(0.0).clamp(-1, 1)  # a diverging run's NaN: grey
    x = x if x.shape[0] == 3 else x[:1].expand(3, -1, -1)
    picture = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    scale = max(1, MIN_TILE // max(1, min(picture.shape[:2])))
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


TITLE_HEIGHT = 16  # pixels of the label band above each tile (when tiles have titles)


def save_grid(rows: list[list[torch.Tensor]], path: Path, gap: int = 2,
              titles: list[list[str]] | None = None) -> None:
    """Tiles placed row by row with a white gap; tiles of different sizes are top-left aligned.
    ``titles`` (one per tile, e.g. "translated (B)") are written above the tiles."""
    tiles = [[to_picture(t) for t in row] for row in rows]
    band = TITLE_HEIGHT if titles else 0
    tile_h = max(t.shape[0] for row in tiles for t in row) + band
    tile_w = max(t.shape[1] for row in tiles for t in row)
    cols = max(len(row) for row in tiles)
    grid = np.full(
        (len(tiles) * (tile_h + gap) - gap, cols * (tile_w + gap) - gap, 3), 255, np.uint8
    )
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            y, x = r * (tile_h + gap) + band, c * (tile_w + gap)
            grid[y : y + t.shape[0], x : x + t.shape[1]] = t
    picture = Image.fromarray(grid)
    if titles:
        _write_titles(picture, titles, tile_h + gap, tile_w + gap)
    with atomic_path(path) as tmp:
        picture.save(tmp)


def _write_titles(picture: Image.Image, titles: list[list[str]], row_step: int,
                  col_step: int) -> None:
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=TITLE_HEIGHT - 4)
    for r, row in enumerate(titles):
        for c, title in enumerate(row):
            draw.text((c * col_step + 2, r * row_step + 1), title, fill=(0, 0, 0), font=font)
