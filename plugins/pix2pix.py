"""pix2pix: paired translation with a conditional GAN.

Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks" (2017).
Naming follows the reference implementation (pytorch-CycleGAN-and-pix2pix, pix2pix_model.py):

    G: A -> B, a U-Net    D: judges (input, output) pairs, cat(a, b) along the channels

Losses per step (reference order, ``optimize_parameters``): fake_b = G(a); first the
discriminator on the pair with the generated image (detached) and on the true pair,
    D_fake = gan(D(cat(a, fake_b)), fake)    D_real = gan(D(cat(a, b)), real)
    loss_D = 0.5 * (D_fake + D_real)
then the generator, with the discriminator frozen,
    G_GAN = gan(D(cat(a, fake_b)), real)    G_L1 = lambda_l1 * |fake_b - b|    loss_G = G_GAN + G_L1
with the vanilla (cross-entropy) GAN loss and lambda_l1 100, no image pool. The losses come
back under these names (G_L1 weighted, as the reference logs it), suffixed ``_a2b`` / ``_b2a``
when both directions are trained.

The reference trains one direction (``--direction AtoB`` or ``BtoA``); here ``direction`` is
"a2b", "b2a" or "both" (two independent generator/discriminator pairs, trained side by side).

Data must be paired: b[i] is a[i]'s counterpart, with the same crop and flip (``paired``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

import styletx
from styletx import DIRECTIONS, Preset, UsageError, direction_sides
from styletx.nn import (
    GAN_MODES,
    NORMS,
    ColourPath,
    GANLoss,
    PatchDiscriminator,
    adam,
    conv_bias,
    init_weights,
    linear_decay,
    norm_layer,
    set_requires_grad,
)

UPSAMPLES = ("transpose", "resize")
TRAINED = ("a2b", "b2a", "both")
MAX_AUTO_DEPTH = 8  # the reference's unet_256: a 256 px crop down to 1x1


@dataclasses.dataclass
class Pix2PixConfig:
    ngf: int = 64  # generator width (channels after the first conv; capped at 8 ngf inside)
    ndf: int = 64  # discriminator width
    depth: int = 0  # U-Net down-samplings (reference unet_256: 8); 0 = from the training crop:
    #                 floor(log2(its smaller side)), at most 8, so the bottleneck is ~1 pixel
    n_layers_d: int = 3  # PatchGAN stride-2 layers: 3 = 70x70 patches, 2 = 34x34
    norm: str = "batch"  # "batch" (reference) | "instance" | "none"
    dropout: float = 0.5  # dropout in the inner up-sampling blocks (see UnetGenerator); 0 = none
    gan_mode: str = "vanilla"  # "vanilla" (reference: cross-entropy) | "lsgan"
    lambda_l1: float = 100.0  # weight of the L1 loss to the true pair
    tanh: bool = True  # tanh output in [-1, 1] (images); False = linear output, for unbounded
    #                    data such as normalised log spectrograms
    upsample: str = "transpose"  # "transpose" (reference: 4x4 stride-2 transposed conv) |
    #                               "resize" (nearest x2 + 3x3 conv: no checkerboard artifacts)
    residual: bool = False  # the generator outputs input + learned change (its last conv
    #                         starts at zero, so it starts as the identity); equal channels only
    colour_path: int = 0  # with ``residual``: hidden width of a per-pixel colour/tone path
    #                       beside the U-Net (styletx.nn.ColourPath); 0 = none
    direction: str = "a2b"  # which generator(s) to train: "a2b", "b2a" or "both"
    lr: float = 2e-4  # Adam learning rate (generator and discriminator)
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    decay_start: float = 0.5  # fraction of the steps at constant lr before the linear decay to 0

    def __post_init__(self):
        for field, value, choices in (("norm", self.norm, NORMS),
                                      ("gan_mode", self.gan_mode, GAN_MODES),
                                      ("upsample", self.upsample, UPSAMPLES),
                                      ("direction", self.direction, TRAINED)):
            if value not in choices:
                raise UsageError(f"pix2pix: {field} must be one of {', '.join(choices)}, "
                                 f"not {value!r}")
        if min(self.ngf, self.ndf, self.n_layers_d) < 1:
            raise UsageError("pix2pix: ngf, ndf and n_layers_d must be >= 1")
        if self.depth < 0 or self.depth == 1:
            raise UsageError(f"pix2pix: depth must be >= 2 (or 0: from the training crop), "
                             f"not {self.depth}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"pix2pix: dropout must be in [0, 1), not {self.dropout}")
        if self.colour_path < 0 or (self.colour_path and not self.residual):
            raise UsageError("pix2pix: colour_path must be >= 0, and needs residual=true (it "
                             "adds a change to the input)")
        if self.lambda_l1 < 0:
            raise UsageError(f"pix2pix: lambda_l1 must be >= 0, not {self.lambda_l1}")
        if self.lr <= 0:
            raise UsageError(f"pix2pix: lr must be > 0, not {self.lr}")
        if not 0.0 <= self.decay_start <= 1.0:
            raise UsageError(f"pix2pix: decay_start must be in [0, 1], not {self.decay_start}")


def auto_depth(side: int) -> int:
    """U-Net depth for a training crop whose smaller side is ``side``: floor(log2(side)),
    between 2 and 8 (256 -> 8 as unet_256, 32 -> 5, 64 -> 6)."""
    return max(2, min(MAX_AUTO_DEPTH, int(math.log2(max(side, 1)))))


def dropout_levels(depth: int) -> list[int]:
    """Levels of a U-Net of ``depth`` (0 = outermost, depth - 1 = innermost) whose up path ends
    in dropout. The reference (depth 8) drops out in its 8ngf blocks between the 4ngf block and
    the innermost one: levels 4 .. depth - 2. Below depth 6 there are none, and dropout is the
    generator's only noise (it has no z input), so then the level just outside the innermost
    gets it, and for depth 2, where that is the outermost, the innermost itself."""
    levels = list(range(4, depth - 1))
    return levels or [max(depth - 2, 1)]


def _upconv(in_ch: int, out_ch: int, mode: str, bias: bool) -> nn.Module:
    """x2 up-sampling conv: ``(N, in_ch, H, W) -> (N, out_ch, 2H, 2W)``."""
    if mode == "transpose":
        return nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=bias)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(in_ch, out_ch, 3, padding=1, padding_mode="reflect", bias=bias))


class UnetBlock(nn.Module):
    """One level of the U-Net (the reference's UnetSkipConnectionBlock):
    ``(N, in_ch, H, W) -> (N, in_ch + outer_ch, H, W)``, or ``(N, outer_ch, H, W)`` outermost.

        down:  LeakyReLU(0.2), conv 4x4 stride 2 -> inner_ch, norm   (outermost: conv only;
                                                                      innermost: no norm)
        inner: the next level, (N, 2 inner_ch, H/2, W/2); none innermost
        up:    ReLU, x2 up-sampling conv -> outer_ch, norm, [dropout] (outermost: no norm,
                                                                      then tanh or linear)
        skip:  cat([x, up(...)]) along the channels

    The skip carries the input after the LeakyReLU, as in the reference, whose in-place
    activation changes the tensor it concatenates. Convs followed by batch norm have no bias;
    the rest have one (the reference drops it on the outermost and innermost down convs too,
    though no norm follows them there).
    """

    def __init__(self, outer_ch: int, inner_ch: int, in_ch: int | None = None,
                 inner: nn.Module | None = None, outermost: bool = False, norm: str = "batch",
                 dropout: float = 0.0, upsample: str = "transpose", tanh: bool = True):
        super().__init__()
        in_ch = outer_ch if in_ch is None else in_ch
        innermost = inner is None
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        self.outermost = outermost
        self.act = nn.Identity() if outermost else nn.LeakyReLU(0.2)
        down: list[nn.Module] = [nn.Conv2d(in_ch, inner_ch, 4, stride=2, padding=1,
                                           bias=bias or outermost or innermost)]
        if not (outermost or innermost):
            down.append(make_norm(inner_ch))
        self.down = nn.Sequential(*down)
        self.inner = nn.Identity() if innermost else inner
        up_in = inner_ch if innermost else 2 * inner_ch  # the inner level's skip doubles it
        up: list[nn.Module] = [nn.ReLU(True), _upconv(up_in, outer_ch, upsample,
                                                      bias=bias or outermost)]
        if outermost:
            if tanh:
                up.append(nn.Tanh())
        else:
            up.append(make_norm(outer_ch))
            if dropout > 0:
                up.append(nn.Dropout(dropout))
        self.up = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        y = self.up(self.inner(self.down(x)))
        return y if self.outermost else torch.cat([x, y], 1)


class UnetGenerator(nn.Module):
    """The reference U-Net: ``(N, in_ch, H, W) -> (N, out_ch, H, W)`` for any H, W >= 1.

    ``depth`` levels of ``UnetBlock``, each halving the size; widths from the outside in ngf,
    2ngf, 4ngf, 8ngf, 8ngf, ... (capped at 8ngf). The reference unet_256 is depth 8: an
    innermost 8ngf block, (depth - 5) 8ngf blocks with dropout, then the 4ngf, 2ngf and ngf
    blocks and the outermost one. Dropout ``dropout`` sits at the end of the up path of the
    levels ``dropout_levels(depth)`` names: the reference's for depth >= 6; for depth <= 5,
    which has no such middle block, the block just outside the innermost (the innermost for
    depth 2). So every U-Net has dropout, and keeping it on at conversion always has an effect.

    Any size: the input is padded up to multiples of 2**depth (reflect where the pad is
    smaller than the side, else replicate) and the output cropped back, so 80-bin spectrograms
    and odd image sizes need no padding by the caller. ``tanh`` False gives a linear output.

    ``residual`` (in_ch == out_ch): the output is ``x + change`` with the last conv zeroed, so
    a fresh generator is the identity (the change stays within +-1 with tanh); ``colour_path``
    adds a per-pixel colour/tone change beside it (``ColourPath``).
    """

    def __init__(self, in_ch: int, out_ch: int, ngf: int = 64, depth: int = 8,
                 norm: str = "batch", dropout: float = 0.5, upsample: str = "transpose",
                 tanh: bool = True, residual: bool = False, colour_path: int = 0):
        super().__init__()
        if depth < 2:
            raise ValueError(f"a U-Net needs depth >= 2, not {depth}")
        self.depth = depth
        drop = set(dropout_levels(depth)) if dropout > 0 else set()

        def width(level: int) -> int:  # channels after the down conv of ``level``
            return ngf * min(2**level, 8)

        block = None
        for level in range(depth - 1, 0, -1):  # innermost first
            block = UnetBlock(width(level - 1), width(level), inner=block, norm=norm,
                              dropout=dropout if level in drop else 0.0, upsample=upsample)
        self.model = UnetBlock(out_ch, ngf, in_ch, inner=block, outermost=True, norm=norm,
                               upsample=upsample, tanh=tanh)
        init_weights(self)
        self.residual = residual and in_ch == out_ch
        if self.residual:
            convs = (nn.Conv2d, nn.ConvTranspose2d)
            last = [m for m in self.model.up.modules() if isinstance(m, convs)][-1]
            nn.init.zeros_(last.weight)
        self.colour = ColourPath(in_ch, colour_path) if self.residual and colour_path else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -h % multiple, -w % multiple
        if pad_w:
            x = F.pad(x, (0, pad_w, 0, 0), mode="reflect" if pad_w < w else "replicate")
        if pad_h:
            x = F.pad(x, (0, 0, 0, pad_h), mode="reflect" if pad_h < h else "replicate")
        return self.unpadded(x)[..., :h, :w]

    def unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The generator on an input whose sides are already multiples of 2**depth."""
        y = self.model(x)
        if self.colour is not None:
            y = y + self.colour(x)
        if self.residual:
            y = y + x
        return y


class Unpadded(nn.Module):
    """``generator.unpadded`` as a module, for export behind ``PadCrop``."""

    def __init__(self, generator: UnetGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator.unpadded(x)


class Pix2Pix(styletx.Translator):
    name = "pix2pix"
    tileable = True  # convolutions and instance/group norms only
    preview_columns = ("input", "translated", "true pair")
    Config = Pix2PixConfig
    paired = True
    presets = {
        "default": Preset(
            train=dict(size=256, batch_size=1),
            description="the reference pix2pix: U-Net generator (ngf 64, 8 levels at 256 px, "
                        "skip connections, dropout 0.5, batch norm, tanh), conditional 70x70 "
                        "PatchGAN on (input, output) pairs (ndf 64), vanilla GAN + 100 x L1, "
                        "Adam 2e-4 with linear decay over the second half; trains a2b",
        ),
        # lr 2e-3 (measured, 300 steps, seeds 0-2, tests/test_paired.py's "ink" scenes):
        # held-out PSNR +5.4 to +6.6 dB over the unconverted input, against +4.9 to +6.3 at
        # 1e-3; on parallel synthetic voices (mel) L1 0.195 against 0.21 (identity 0.28)
        "tiny": Preset(
            config=dict(ngf=8, ndf=8, n_layers_d=2, lr=2e-3),
            train=dict(size=32, batch_size=4, steps=300),
            description="a CPU model for tests and smoke runs, ~10 ms a step on 2 cores at "
                        "32 px, batch 4: the reference architecture at ngf/ndf 8 (5 U-Net "
                        "levels), 34x34 patches, lr 2e-3",
        ),
        "fast": Preset(
            config=dict(ngf=16, ndf=16, n_layers_d=2, upsample="resize", residual=True,
                        colour_path=32, lr=1e-3),
            train=dict(size=64, batch_size=4, steps=3000),
            description="quality per CPU minute on photos: starts as the identity (output = "
                        "input + change) with a per-pixel colour/tone path beside a U-Net at "
                        "ngf 16 (resize-conv up-sampling: no checkerboard), 34x34 PatchGAN "
                        "(ndf 16), lr 1e-3, 64 px; pair with --minutes",
        ),
    }
    # Spectrograms (1, bins, frames): 64-frame segments with every bin; a linear output, since
    # normalised log spectrograms are not bounded. Depth 6 at 64 frames (80 bins pad to 128).
    domain_presets = {"audio": {
        "default": Preset(
            config=dict(tanh=False),
            train=dict(size=64, batch_size=1),
            description="pix2pix for parallel (DTW-aligned) voices: the reference U-Net (ngf "
                        "64, 6 levels at 64 frames, dropout 0.5, batch norm) with a linear "
                        "output, conditional 70x70 PatchGAN (ndf 64), vanilla GAN + 100 x L1, "
                        "64-frame segments",
        ),
        "tiny": Preset(
            config=dict(ngf=8, ndf=8, n_layers_d=2, lr=2e-3, tanh=False),
            train=dict(size=64, batch_size=4, steps=300),
            description="a CPU voice model for tests and smoke runs, ~20 ms a step on 2 "
                        "cores at 80 bins x 64 frames, batch 4: the U-Net at ngf 8 (6 "
                        "levels), linear output, 34x34 PatchGAN at ndf 8, lr 2e-3",
        ),
    }}

    @classmethod
    def config_for_data(cls, config: Pix2PixConfig, shapes: dict,
                        crop: tuple[int | None, int]) -> Pix2PixConfig:
        """depth 0: floor(log2) of the training crop's smaller side, at most 8 (unet_256),
        so the bottleneck is about one pixel; a None crop height is the tensors' height."""
        if config.depth:
            return config
        height, width = crop
        if height is None:
            height = min(shape[1] for shape in shapes.values())
        return dataclasses.replace(config, depth=auto_depth(min(height, width)))

    def __init__(self, config: Pix2PixConfig, channels_a: int, channels_b: int):
        super().__init__(config, channels_a, channels_b)
        c = config
        # depth 0 is settled by config_for_data when training; built without data: unet_256
        depth = c.depth or MAX_AUTO_DEPTH
        self.directions = DIRECTIONS if c.direction == "both" else (c.direction,)
        self.generators: dict[str, UnetGenerator] = {}
        self.discriminators: dict[str, PatchDiscriminator] = {}
        for direction in self.directions:
            src, dst = self.channels[direction[0]], self.channels[direction[2]]
            self.generators[direction] = UnetGenerator(src, dst, c.ngf, depth, c.norm,
                                                       c.dropout, c.upsample, c.tanh,
                                                       c.residual, c.colour_path)
            # conditional: judges the input and the (real or generated) output together
            self.discriminators[direction] = PatchDiscriminator(src + dst, c.ndf, c.n_layers_d,
                                                                c.norm)
        self.gan_loss = GANLoss(c.gan_mode)

    def networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {}
        for direction in self.directions:
            nets[f"G_{direction}"] = self.generators[direction]
            nets[f"D_{direction}"] = self.discriminators[direction]
        return nets

    def _check_training_shape(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Clear errors for batches the networks cannot take, before they fail deep inside."""
        c = self.config
        if a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:]:
            raise UsageError(f"pix2pix: needs aligned pairs of the same size, got A "
                             f"{tuple(a.shape)} and B {tuple(b.shape)}")
        h, w = a.shape[-2:]
        least = 3 * 2**c.n_layers_d  # PatchGAN: n_layers_d stride-2 k4 convs, two stride-1
        if min(h, w) < least:
            raise UsageError(f"pix2pix: {h}x{w} training crops are too small for the "
                             f"discriminator (n_layers_d {c.n_layers_d} needs at least "
                             f"{least}x{least}); use a larger --size or a smaller n_layers_d")

    # -- training -------------------------------------------------------------------------
    def configure_optimizers(self, total_steps: int) -> None:
        c = self.config
        # One optimizer for the generator(s), one for the discriminator(s), as the reference.
        # Adam is per parameter, so with both directions this equals one pair per direction.
        self.optimizers = {
            name: adam([p for net in nets.values() for p in net.parameters()], c.lr,
                       (c.beta1, c.beta2))
            for name, nets in (("G", self.generators), ("D", self.discriminators))
        }
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(total_steps, c.decay_start))
            for name, opt in self.optimizers.items()
        }

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.config
        real = {side: batch[side].to(self.device, non_blocking=True) for side in ("a", "b")}
        self._check_training_shape(real["a"], real["b"])
        pairs = [(d, real[d[0]], real[d[2]]) for d in self.directions]  # (direction, src, tgt)
        discriminators = list(self.discriminators.values())
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        losses: dict[str, torch.Tensor] = {}

        with self.autocast():
            fakes = self.forward_for("G", lambda: {d: self.generators[d](src)
                                                   for d, src, _ in pairs})

        # Discriminator(s): the generated pair (detached) is fake, the true pair real.
        opt_d.zero_grad(set_to_none=True)
        loss_d = torch.zeros((), device=self.device)
        with self.autocast():
            judged = self.forward_for("D", self._judge, pairs, fakes)
            for d, _, _ in pairs:
                losses[f"D_fake_{d}"] = self.gan_loss(judged[d][0], False)
                losses[f"D_real_{d}"] = self.gan_loss(judged[d][1], True)
                loss_d = loss_d + 0.5 * (losses[f"D_fake_{d}"] + losses[f"D_real_{d}"])
        loss_d.backward()
        opt_d.step()

        # Generator(s), with the discriminator(s) frozen so that no gradient is computed for them.
        set_requires_grad(discriminators, False)
        opt_g.zero_grad(set_to_none=True)
        loss_g = torch.zeros((), device=self.device)
        with self.autocast():
            for d, src, tgt in pairs:
                net = self.discriminators[d]
                losses[f"G_GAN_{d}"] = self.gan_loss(net(torch.cat([src, fakes[d]], 1)), True)
                losses[f"G_L1_{d}"] = F.l1_loss(fakes[d].float(), tgt) * c.lambda_l1
                loss_g = loss_g + losses[f"G_GAN_{d}"] + losses[f"G_L1_{d}"]
        loss_g.backward()
        opt_g.step()
        set_requires_grad(discriminators, True)

        names = ("G_GAN", "G_L1", "D_real", "D_fake")
        if len(self.directions) == 1:  # the reference's names; suffixed only with both
            keys = {name: f"{name}_{self.directions[0]}" for name in names}
        else:
            keys = {f"{name}_{d}": f"{name}_{d}" for d in self.directions for name in names}
        values = torch.stack([losses[k].detach().float().to(self.device) for k in keys.values()])
        return dict(zip(keys, values.tolist()))  # one device sync, not four

    def _judge(self, pairs: list, fakes: dict[str, torch.Tensor]) -> dict[str, tuple]:
        """The discriminators' forward pass: per direction, D on the generated pair (detached)
        and on the true pair, in separate calls so batch norm sees each alone (the
        reference's order)."""
        judged = {}
        for d, src, tgt in pairs:
            net = self.discriminators[d]
            fake, true = torch.cat([src, fakes[d].detach()], 1), torch.cat([src, tgt], 1)
            judged[d] = (net(fake), net(true))
        return judged

    # -- inference ------------------------------------------------------------------------
    def _check_direction(self, direction: str, remedy: str) -> None:
        direction_sides(direction)  # a2b or b2a
        if direction not in self.generators:
            raise UsageError(f"pix2pix: this model was trained for {self.config.direction} "
                             f"only, not {direction}; {remedy}")

    def check_direction(self, direction: str) -> None:
        self._check_direction(direction, f"train with --set direction=both (or "
                                         f"direction={direction}) to translate that way")

    def translate(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """``(N, C_src, H, W) -> (N, C_dst, H, W)`` float32 on x's device, any H and W (the
        U-Net pads itself). Runs in the networks' current mode: eval for deterministic output,
        or with the dropout modules in train mode for the reference's test-time noise."""
        self.check_direction(direction)
        src = direction[0]
        if x.ndim != 4 or x.shape[1] != self.channels[src]:
            raise ValueError(f"{direction} expects (N, {self.channels[src]}, H, W), "
                             f"got {tuple(x.shape)}")
        with torch.no_grad(), self.autocast():
            y = self.generators[direction](x.to(self.device, torch.float32))
        return y.float().to(x.device)

    def export_module(self, direction: str) -> nn.Module:
        """The U-Net of ``direction``: its blocks behind the padding its forward applies (to
        multiples of 2**depth, reflect where the pad is smaller than the side, else replicate),
        written without a branch on the size."""
        self._check_direction(direction, f"export --direction {self.directions[0]}")
        generator = self.generators[direction]
        return styletx.PadCrop(Unpadded(generator), multiple=2**generator.depth)

    def preview(self, batch: dict[str, torch.Tensor]) -> list[list[tuple[str, torch.Tensor]]]:
        """One row per trained direction: (input, translated, the true pair)."""
        rows = []
        for direction in self.directions:
            src, dst = direction[0], direction[2]
            x, truth = batch[src][:1], batch[dst][:1]
            rows.append([(src, x[0]), (dst, self.translate(x, direction)[0]), (dst, truth[0])])
        return rows


@styletx.hookimpl
def register_translators(register):
    register(Pix2Pix)
