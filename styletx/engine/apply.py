"""Applying a network to inputs of any size, shared by conversion, evaluation, export and the
latent tools: padding to the network's multiple and cropping back, cutting long inputs
(recordings) into chunks and blending them back, and how many inputs go through one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

BATCH_SIZE = 8  # at most this many inputs of one shape per network call (``--batch-size``)
# ... and at most this many input positions (N x H x W) per call, so large inputs go fewer at a
# time (always at least one). On the CPU big batches are slower, not faster: the default
# generator's activations are 256 bytes per input pixel, so one 256 x 256 image already fills
# the caches and a batch of them runs from main memory. Measured (2-core EPYC, 2 threads, the
# default image generator, ms per image at batch 1 / 2 / 4 / 8): 32 px 13.8 / 11.0 / 9.9 / 9.4,
# 64 px 38.8 / 36.8 / 35.4 / 35.1, 128 px 137 / 135 / 145 / 158, 256 px 558 / 594 / 679 / 711;
# the default voice model on a 10 s recording's 4 chunks: 513 / 537 / 573 ms for 1 / 2 / 4
# chunks a call. Hence 2 x 128 x 128 on the CPU (eight 64 px images, two 128 px, one 256 px or
# one voice chunk of 80 x 256). GPUs want big batches; their limit is memory: 8 x 256 x 256.
BATCH_ELEMENTS = {"cpu": 2 * 128 * 128, "default": 8 * 256 * 256}


# -- how many at a time ------------------------------------------------------------------------
def per_call(batch_size: int, device: torch.device, elements: int) -> int:
    """Inputs of ``elements`` positions (H x W) each per network call on ``device``: at most
    ``batch_size``, within ``BATCH_ELEMENTS``, at least one."""
    limit = BATCH_ELEMENTS.get(device.type, BATCH_ELEMENTS["default"])
    return max(1, min(batch_size, limit // elements))


def group_by_shape(items: Sequence[torch.Tensor]) -> dict[tuple[int, ...], list[int]]:
    """The indices of ``items`` by shape, in order: tensors that can be stacked together."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(items):
        groups.setdefault(tuple(x.shape), []).append(i)
    return groups


# -- chunks --------------------------------------------------------------------------------------
def chunk_starts(width: int, chunk: int, step: int) -> list[int]:
    """Starts of chunks of ``chunk`` along a width of ``width`` (> chunk), every ``step``, the
    last one ending at the end (overlapping the one before it more than the others)."""
    return list(range(0, width - chunk, step)) + [width - chunk]


def blend_chunks(chunks: Sequence[torch.Tensor], starts: Sequence[int], width: int,
                 overlap: int) -> torch.Tensor:
    """Chunks ``(..., chunk)`` translated from the pieces at ``starts`` back into one
    ``(..., width)``: in each overlap the two chunks are blended with complementary linear
    ramps, so there is no step at the seam."""
    chunk = chunks[0].shape[-1]
    out = torch.zeros(*chunks[0].shape[:-1], width)
    weight = torch.zeros(width)
    for i, (start, y) in enumerate(zip(starts, chunks)):
        w = ramp(starts, i, chunk, overlap)
        out[..., start : start + chunk] += y * w
        weight[start : start + chunk] += w
    return out / weight


def ramp(starts: Sequence[int], i: int, chunk: int, overlap: int) -> torch.Tensor:
    """The blending weights of chunk ``i`` (of ``chunk`` elements, at ``starts[i]``): 1, but
    rising over its overlap with the chunk before and falling over the one with the chunk
    after (at most ``overlap`` elements each)."""
    w = torch.ones(chunk)
    if i > 0:  # fade in over the overlap with the previous chunk
        fade = min(overlap, starts[i - 1] + chunk - starts[i])
        w[:fade] = torch.linspace(0, 1, fade + 2)[1:-1]
    if i < len(starts) - 1:  # fade out over the overlap with the next chunk
        fade = min(overlap, starts[i] + chunk - starts[i + 1])
        w[chunk - fade :] = torch.linspace(1, 0, fade + 2)[1:-1]
    return w


# -- padding -------------------------------------------------------------------------------------
def pad_for_network(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``(..., H, W)`` padded at the bottom and right to multiples of ``multiple`` and to at least
    two of them, so that even a tiny input keeps more than one element at the network's
    coarsest scale (instance norm needs it). Reflected, which hides the border best; replicated
    when an axis is too small to reflect (both then, so the corner stays consistent). An input
    that needs no padding is returned as it is (the gathers would copy it)."""
    height, width = x.shape[-2:]
    if all(padded_size(size, multiple, 2 * multiple) == size for size in (height, width)):
        return x
    return pad_bottom_right(x, multiple, 2 * multiple, "reflect", joint=True)


# -- export-friendly padding (also what pad_for_network uses) -------------------------------
# torch.export and torch.jit.trace record tensor operations and (symbolic) integer arithmetic on
# sizes, but a Python ``if`` or ``max`` on a size is decided once, for the example input, and
# baked into the graph. These helpers compute what F.pad would with integer arithmetic alone,
# on non-negative numbers (ONNX's integer division truncates where Python's floors).
def padded_size(size, multiple: int, least: int = 0):
    """``size`` rounded up to a multiple of ``multiple``, and at least ``least``, which must
    be 0, ``multiple`` or ``2 * multiple`` (``max(blocks, 2)`` is ``blocks + 1 // blocks``
    for ``blocks >= 1``: exact, and simple enough for torch.export's symbolic shapes, which
    mis-evaluate the general branch-free maximum)."""
    if least not in (0, multiple, 2 * multiple):
        raise ValueError(f"least must be 0, {multiple} or {2 * multiple}, not {least}")
    blocks = (size + multiple - 1) // multiple
    if least == 2 * multiple:
        blocks = blocks + 1 // blocks
    return blocks * multiple


def _positions(like: torch.Tensor, count) -> torch.Tensor:
    """``torch.arange(count)`` on ``like``'s device, as ops on ``like``: a traced arange keeps
    the device it was traced on as a constant, so a TorchScript file traced on the CPU failed
    on a GPU."""
    return like.new_ones(count, dtype=torch.long).cumsum(0) - 1


def _pad_index(size, multiple: int, least: int, like: torch.Tensor):
    """For one axis of ``size`` padded at the end: the positions, their mirror images (reflect
    padding) and whether reflection is possible (the pad is smaller than the size)."""
    j = _positions(like, padded_size(size, multiple, least))
    mirror = 2 * (size - 1) - j
    return j, mirror, mirror[-1:] >= 0


def pad_bottom_right(x: torch.Tensor, multiple: int | tuple[int, int] = 1,
                     least: int | tuple[int, int] = 0, mode: str = "reflect",
                     joint: bool = False) -> torch.Tensor:
    """Pad ``(..., H, W)`` at the bottom and right up to multiples of ``multiple`` and at least
    ``least`` (each an int or a per-axis ``(H, W)`` pair), as ``F.pad`` would, but with no Python
    branch on the size, so one traced or exported graph serves every size.

    ``mode`` "replicate" repeats the last row/column; "reflect" mirrors where the pad is smaller
    than the axis and replicates where it is not (F.pad's reflect cannot), each axis on its own
    (``styletx.plugins``' networks) or, with ``joint``, both replicated unless both can reflect
    (``Run.convert_tensor``). An axis with multiple 1 and least <= 1 is left alone.
    """
    if mode not in ("reflect", "replicate"):
        raise ValueError(f"mode must be reflect or replicate, not {mode!r}")
    multiples = (multiple, multiple) if isinstance(multiple, int) else tuple(multiple)
    leasts = (least, least) if isinstance(least, int) else tuple(least)
    axes = [(-2, x.shape[-2], multiples[0], leasts[0]), (-1, x.shape[-1], multiples[1], leasts[1])]
    axes = [axis for axis in axes if axis[2] > 1 or axis[3] > 1]
    index = [_pad_index(size, m, n, x) for _, size, m, n in axes]
    if mode == "replicate":
        ok = [torch.zeros_like(can) for _, _, can in index]
    elif joint and len(index) == 2:
        ok = [index[0][2] & index[1][2]] * 2
    else:
        ok = [can for _, _, can in index]
    for (dim, size, _, _), (j, mirror, _), can in zip(axes, index, ok):
        x = x.index_select(dim, torch.where(j < size, j, torch.where(can, mirror, size - 1)))
    return x


def crop(y: torch.Tensor, height, width) -> torch.Tensor:
    """``y[..., :height, :width]`` as gathers: a slice whose end may equal the size makes
    torch.export guard on the two being different."""
    y = y.index_select(-2, _positions(y, height))
    return y.index_select(-1, _positions(y, width))


class PadCrop(nn.Module):
    """``crop(net(pad_bottom_right(x, ...)), H, W)``: a network that needs sizes of a multiple,
    made to take any size, as export-friendly code (arguments as ``pad_bottom_right``)."""

    def __init__(self, net: nn.Module, multiple: int | tuple[int, int] = 1,
                 least: int | tuple[int, int] = 0, mode: str = "reflect", joint: bool = False):
        super().__init__()
        self.net = net
        self.multiple, self.least, self.mode, self.joint = multiple, least, mode, joint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        y = self.net(pad_bottom_right(x, self.multiple, self.least, self.mode, self.joint))
        return crop(y, height, width)
