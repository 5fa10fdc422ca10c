"""colormatch: the smallest useful styletx translator, as an example plugin.

Each direction is a per-channel affine colour map ``y = x * scale + shift`` (2·C numbers),
initialised to the identity. Training needs no pairs: for ``a2b`` the map is fitted so that the
per-channel mean and standard deviation of the translated A batch match those of the B batch
(and ``b2a`` the other way round). That is Reinhard-style colour transfer, learned with Adam
over many random batches instead of computed from two images. It cannot move shapes or mix
channels, but it trains in about a second on a CPU and shows every part of the Translator
interface.

Install with ``pip install examples/styletx-colormatch``; then ``styletx train A B --model
colormatch --preset tiny``. See docs/plugins.md for the walk-through.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import styletx


@dataclasses.dataclass
class ColorMatchConfig:
    lr: float = 0.05  # Adam learning rate; the map has only 2·C numbers, so large steps are fine
    beta1: float = 0.9  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    std_weight: float = 1.0  # weight of the std-matching term (the mean term has weight 1)

    def __post_init__(self):
        # Bad settings are the user's mistake (--set lr=-1): a one-line UsageError, no traceback.
        if self.lr <= 0 or self.std_weight < 0:
            raise styletx.UsageError("colormatch: lr must be > 0 and std_weight >= 0")


class ColorMap(nn.Module):
    """``(N, C, H, W) -> (N, C, H, W)``: ``y[:, c] = x[:, c] * scale[c] + shift[c]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))  # identity at the start
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) std of a batch ``(N, C, H, W)``, each of shape ``(C,)``."""
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), correction=0)


class ColorMatch(styletx.Translator):
    name = "colormatch"
    Config = ColorMatchConfig
    paired = False  # any A batch is compared with any B batch
    presets = {
        "default": styletx.Preset(
            train=dict(size=128, batch_size=8, steps=300),
            description="Adam 0.05 decaying linearly to 0, 300 steps of 8 crops of 128 px",
        ),
        "tiny": styletx.Preset(
            config=dict(lr=0.1),
            train=dict(size=32, batch_size=4, steps=50),
            description="a one-second CPU run for tests: lr 0.1, 50 steps of 4 crops of 32 px",
        ),
    }

    def __init__(self, config: ColorMatchConfig, channels_a: int, channels_b: int):
        super().__init__(config, channels_a, channels_b)
        if channels_a != channels_b:
            # A per-channel map cannot turn gray into colour; say so instead of guessing.
            raise styletx.UsageError(
                f"colormatch needs the same channel count on both sides "
                f"(got {channels_a} and {channels_b}); try --encoder rgb"
            )
        self.a2b = ColorMap(channels_a)
        self.b2a = ColorMap(channels_b)

    def networks(self) -> dict[str, nn.Module]:
        # These names are the checkpoint keys: net.a2b.scale, net.a2b.shift, net.b2a.* in
        # model.safetensors. Renaming them breaks every saved run.
        return {"a2b": self.a2b, "b2a": self.b2a}

    # size_multiple stays 1: a per-pixel map takes any height and width.

    # -- training -------------------------------------------------------------------------
    def configure_optimizers(self, total_steps: int) -> None:
        c = self.config
        params = [*self.a2b.parameters(), *self.b2a.parameters()]
        self.optimizers = {"maps": torch.optim.Adam(params, lr=c.lr, betas=(c.beta1, c.beta2))}
        # Batch statistics are noisy; a linear decay to 0 lets the map settle on their average.
        # The trainer steps the scheduler after every training_step and checkpoints its state.
        self.schedulers = {
            "maps": torch.optim.lr_scheduler.LambdaLR(
                self.optimizers["maps"], lambda step: max(0.0, 1.0 - step / total_steps)
            )
        }

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        real_a, real_b = batch["a"].to(self.device), batch["b"].to(self.device)
        opt = self.optimizers["maps"]
        opt.zero_grad(set_to_none=True)
        # The forward pass of the "maps" optimizer's loss, through forward_for: under torchrun
        # that averages the gradients over the processes (in one process it is a plain call).
        fake_b, fake_a = self.forward_for("maps", lambda: (self.a2b(real_a), self.b2a(real_b)))
        losses = {}
        for name, fake, target in (("a2b", fake_b, real_b), ("b2a", fake_a, real_a)):
            mean_y, std_y = channel_stats(fake)
            mean_t, std_t = channel_stats(target)
            mean_loss = ((mean_y - mean_t) ** 2).mean()
            std_loss = ((std_y - std_t) ** 2).mean()
            losses[name] = mean_loss + self.config.std_weight * std_loss
        (losses["a2b"] + losses["b2a"]).backward()
        opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    # -- inference ------------------------------------------------------------------------
    def translate(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)`` float32 on x's device, any H and W."""
        if direction not in styletx.DIRECTIONS:
            raise ValueError(f"direction must be one of {styletx.DIRECTIONS}, not {direction!r}")
        net = self.a2b if direction == "a2b" else self.b2a
        with torch.no_grad():
            return net(x.to(self.device, torch.float32)).to(x.device)


@styletx.hookimpl
def register_translators(register):
    register(ColorMatch)
