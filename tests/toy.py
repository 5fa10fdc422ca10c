"""A toy unpaired task with a known answer, shared by the model tests: reddish patterns (A)
and other such patterns with red and blue swapped (B)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reddish_images(n: int, generator: torch.Generator, size: int = 32) -> torch.Tensor:
    """A smooth brightness pattern times a per-image reddish colour, plus a little per-channel
    texture, in [-1, 1]. Domain B is the same kind of image with red and blue swapped."""
    low = torch.rand(n, 4, 4, 4, generator=generator)
    up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    lo, hi = torch.tensor([0.85, 0.35, 0.05]), torch.tensor([1.0, 0.5, 0.2])
    colour = (lo + (hi - lo) * torch.rand(n, 3, generator=generator)).view(n, 3, 1, 1)
    return (2 * (up[:, :1] * colour + 0.15 * (up[:, 1:] - 0.5)) - 1).clamp(-1, 1)


def swap_red_blue(x: torch.Tensor) -> torch.Tensor:
    return x.flip(1)


def train_red_blue(model, steps: int, batch_size: int, size: int, seed: int = 1) -> None:
    """``steps`` training steps on unpaired batches (a and b from independent draws), stepping
    the schedulers as the trainer does."""
    model.configure_optimizers(steps)
    rng = torch.Generator().manual_seed(seed)
    for step in range(steps):
        batch = {"a": reddish_images(batch_size, rng, size),
                 "b": swap_red_blue(reddish_images(batch_size, rng, size))}
        model.training_step(batch, step)
        for scheduler in model.schedulers.values():
            scheduler.step()
