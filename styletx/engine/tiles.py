"""Any-size images in bounded memory: an image larger than ``WHOLE_PIXELS`` is translated in
overlapping tiles, blended back with linear ramps. Per-image normalisations (instance norm, and
group norm, e.g. layer norm) would give every tile statistics of its own, and so a tone step at
each seam; they are fixed instead, for every tile, to the statistics of the whole image, taken
from one pass over a reduced copy of it. Every tile then goes through the same function, and
what differs near a tile's edge (the network sees less around it) fades out in the overlap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from styletx.engine.apply import chunk_starts, ramp

__all__ = ["WHOLE_PIXELS", "TILE", "OVERLAP", "STATS_SIDE", "needs_tiles", "translate_tiled"]

WHOLE_PIXELS = 1024 * 1024  # larger images are tiled: ~1.8 GiB at most (convert_large.py)
TILE = 768  # pixels: a tile's side, a multiple of every built-in network's size multiple
OVERLAP = 64  # pixels shared by neighbouring tiles and blended (47.5 dB against one piece)
STATS_SIDE = 1024  # the reduced copy's longer side, for the normalisation statistics
NORMS = (nn.InstanceNorm2d, nn.GroupNorm)


def needs_tiles(height: int, width: int) -> bool:
    return height * width > WHOLE_PIXELS and max(height, width) > TILE


def translate_tiled(translate: Callable[[torch.Tensor], torch.Tensor], network: nn.Module,
                    x: torch.Tensor) -> torch.Tensor:
    """``translate`` (N, C, H, W) -> (N, C', H, W) of one image ``x`` (N = 1), tile by tile,
    with ``network``'s normalisations fixed to the whole image's statistics."""
    stats = _statistics(translate, network, _reduced(x))
    height, width = x.shape[-2:]
    rows = chunk_starts(height, TILE, TILE - OVERLAP) if height > TILE else [0]
    cols = chunk_starts(width, TILE, TILE - OVERLAP) if width > TILE else [0]
    out = weight = None
    with _fixed_statistics(network, stats):
        for i, top in enumerate(rows):
            for j, left in enumerate(cols):
                tile = x[..., top : top + TILE, left : left + TILE]
                y = translate(tile)
                if out is None:
                    out = torch.zeros(*y.shape[:-2], height, width)
                    weight = torch.zeros(height, width)
                w = (ramp(rows, i, tile.shape[-2], OVERLAP)[:, None]
                     * ramp(cols, j, tile.shape[-1], OVERLAP)[None, :])
                out[..., top : top + TILE, left : left + TILE] += y * w
                weight[top : top + TILE, left : left + TILE] += w
    return out / weight


def _reduced(x: torch.Tensor) -> torch.Tensor:
    """The whole image with its longer side at most STATS_SIDE (area-averaged)."""
    scale = STATS_SIDE / max(x.shape[-2:])
    if scale >= 1:
        return x
    size = [max(1, round(s * scale)) for s in x.shape[-2:]]
    return F.interpolate(x, size=size, mode="area")


def _statistics(translate, network: nn.Module, x: torch.Tensor) -> dict[nn.Module, tuple]:
    """(mean, variance) of each normalisation's input, per example and group, in one pass."""
    stats, hooks = {}, []

    def record(module, inputs):
        stats[module] = _moments(module, inputs[0])

    for module in network.modules():
        if isinstance(module, NORMS):
            hooks.append(module.register_forward_pre_hook(record))
    try:
        translate(x)
    finally:
        for hook in hooks:
            hook.remove()
    return stats


def _groups(module: nn.Module, channels: int) -> int:
    return module.num_groups if isinstance(module, nn.GroupNorm) else channels


def _moments(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, c = x.shape[:2]
    grouped = x.float().reshape(n, _groups(module, c), -1)
    return grouped.mean(-1), grouped.var(-1, unbiased=False)


@contextlib.contextmanager
def _fixed_statistics(network: nn.Module, stats: dict[nn.Module, tuple]) -> Iterator[None]:
    """Each normalisation in ``stats`` normalises with the given moments instead of its
    input's own (its affine weights, if any, applied as usual)."""
    for module, (mean, var) in stats.items():
        module.forward = _fixed_forward(module, mean, var)
    try:
        yield
    finally:
        for module in stats:
            del module.forward  # back to the class's forward


def _fixed_forward(module: nn.Module, mean: torch.Tensor, var: torch.Tensor):
    def forward(x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        groups = _groups(module, c)
        scale = torch.rsqrt(var.to(x.device) + module.eps)
        y = (x.float().reshape(n, groups, -1) - mean.to(x.device)[..., None]) * scale[..., None]
        y = y.reshape(x.shape)
        if module.weight is not None:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * module.weight.reshape(shape) + module.bias.reshape(shape)
        return y.to(x.dtype)

    return forward
