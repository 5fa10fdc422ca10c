"""VAE/GAN (UNIT): unpaired translation through a shared latent space.

Liu, Breuel, Kautz, "Unsupervised Image-to-Image Translation Networks" (2017); reference code
mingyuliutw/UNIT. Each domain has a variational auto-encoder; the encoders' deepest block and the
decoders' first block are shared (the same modules), so both domains map to one latent space:

    E_a = enc_a -> shared_enc    G_a = shared_dec -> dec_a      (likewise E_b, G_b)
    z_a ~ q(z|a) = N(mu, diag(exp(logvar))) from E_a(a);  a -> b is G_b(z_a)
    D_a judges A-domain images (real a vs G_a(z_b))    D_b judges B-domain images

Losses per step, the reference's (``UNIT_Trainer.gen_update``) with its weights:

    recon_a = lambda_recon * |G_a(z_a) - a|           z_a sampled with the reparameterization trick
    kl_a    = beta * mean KL(q(z|a) || N(0, I))
    cycle_a = lambda_cycle * |G_a(z_aba) - a|         z_aba ~ q(z | G_b(z_a)), encoded by E_b
    kl_cyc_a = beta * mean KL(q(z | G_b(z_a)) || N(0, I))
    G_adv_a = lambda_gan * sum over scales lsgan(D_b(G_b(z_a)), real)
    idt_a   = lambda_cycle * lambda_identity * |G_b(mu(E_a(b))) - b|   (not UNIT's; see below)
    G = sum of the above for both domains
    D_a = sum over scales lsgan(D_a(a), real) + lsgan(D_a(G_a(z_b)), fake)   (likewise D_b)

(the ``_a`` terms start from domain A; the losses come back under these names, weighted). The
discriminators step first on the detached translations, then the generator parts, as in the
reference's training loop (it encodes twice; here one forward pass serves both updates).

The identity loss is CycleGAN's (a -> b should leave a real b alone), added because without
it the translation has no reason to keep colours: the GAN only asks that translations look like
the other domain, and the latent is free to pair each A colour with any B colour of the same
frequency. Measured on ``styletx.demo``'s colour transform (48 unpaired scenes at 40 px, 8
held out; tiny preset; PSNR of the translations minus that of the unconverted inputs, data and
training seeds 0, 1, 2): without it -1.4 dB (seed 0, 300 steps), -1.6, -1.6, -2.3 dB (1000
steps), and +3.2, -1.6, -2.3 dB with every residual block shared; with lambda_identity 0.5,
+4.8, +2.5, +5.2 dB at 300 steps and +4.3, +2.5, +5.7 dB at 600. A larger beta instead did not
help (0.1 and 1.0, seed 0: -0.1 dB). So it is on by default, as in CycleGAN
(``lambda_identity=0`` gives UNIT's losses). It needs equal channel counts and is skipped
otherwise, and costs two more encoder-decoder passes a step.

The latent: UNIT's encoder outputs only a mean and adds unit-variance noise, with ``mean(mu^2)``
as its "KL". Here the encoder outputs a mean AND a log-variance (a 1x1 conv on the shared
block's output, zero-initialised, so a fresh model starts exactly at UNIT's unit variance), and
the KL is the exact closed form ``kl_normal``. Why: the latent space is used beyond translation.
The outlier score ``negative_elbo`` is a negative evidence lower bound, which needs the
posterior's true variance, and sampling draws z from the prior N(0, I), which is only meaningful
when the KL is the real divergence to that prior. ``beta`` weights it (UNIT's recon_kl_w 0.01,
the default; note that UNIT's ``mean(mu^2)`` is twice the KL at unit variance, so 0.01 here is
half UNIT's pull on the mean); beta > 1 gives beta-VAE behaviour: a latent closer to the prior
(better samples and traversals) at the price of blurrier reconstructions.

Networks (UNIT's VAEGen, ``n_downsample`` 2), for ``ngf`` and ``n_res`` residual blocks per
encoder and decoder, of which the last ``n_shared`` of each encoder and the first ``n_shared`` of
each decoder are shared:

    enc_{a,b}:   7x7 conv ngf, 2 x [4x4 stride-2 conv] (2ngf, 4ngf), each + norm + ReLU;
                 n_res - n_shared residual blocks
    shared_enc:  n_shared residual blocks -> mu; 1x1 conv -> logvar    (N, 4ngf, H/4, W/4) each
    shared_dec:  n_shared residual blocks
    dec_{a,b}:   n_res - n_shared residual blocks, 2 x [nearest x2, 5x5 conv, layer norm, ReLU]
                 (2ngf, ngf), 7x7 conv, tanh (images) or linear (spectrograms)
    D_{a,b}:     multi-scale PatchGANs, see MultiScaleDiscriminator

Residual blocks use instance norm and reflection padding (``styletx.nn.ResnetBlock``), as UNIT.
The decoder's up-sampling blocks use layer norm (``nn.GroupNorm(1, C)``: per example over
channels and positions, with a per-channel affine), UNIT's choice: unlike instance norm it keeps
the channels' relative levels, which carry an image's overall colour. For the same reason the
encoder's convs use layer norm too by default (``enc_norm``), where UNIT uses instance norm:
instance norm right after the first conv makes the encoder blind to any constant colour added
to the whole image (a conv of a constant image is constant per channel, and instance norm
removes each channel's mean), so a VAE cannot reconstruct, nor a translation transfer, an
image's global colour. Measured (tiny networks, 300 steps, lr 1e-3): a plain auto-encoder on
``styletx.demo`` scenes reaches a held-out L1 of 0.19 with layer norm, 0.36 with instance norm;
on tests/test_vaegan.py's colour task the translation's L1 to the truth is 0.17-0.18 of the
untranslated input's with layer norm, 0.19-0.20 with instance norm (200 steps, 3 seeds).
Generator parts are initialised as UNIT's ("kaiming", ``kaiming_init``), the discriminators
N(0, 0.02) as UNIT's ("gaussian").

Any size: the networks see the input padded (reflect where the pad is smaller than the side,
else replicate) up to multiples of ``latent_stride`` (4) and at least 8 pixels (the residual
blocks' reflection padding needs 2x2 latents), and outputs are cropped back; so
``size_multiple`` is 1 and spectrograms of any bin count work.

Optimisation: Adam lr 1e-4, betas (0.5, 0.999), weight decay 1e-4 for both optimizers (one for
all generator parts, one for both discriminators), the lr halved every 100k steps (UNIT's
step policy; ``lr_step`` 0 keeps it constant).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import styletx
from styletx import DIRECTIONS, SIDES, LatentTranslator, Preset, UsageError, direction_sides
from styletx.nn import (
    GAN_MODES,
    ColourPath,
    GANLoss,
    ResnetBlock,
    adam,
    init_weights,
    set_requires_grad,
)

ENC_NORMS = ("layer", "instance", "none")
LATENT_STRIDE = 4  # two stride-2 down-samplings
MIN_SIZE = 8  # padded inputs are at least this big: 2x2 latents for the reflection padding


@dataclasses.dataclass
class VAEGANConfig:
    ngf: int = 64  # generator width after the first conv; the latent has 4 ngf channels
    n_res: int = 4  # residual blocks per encoder and per decoder, the shared ones included
    n_shared: int = 1  # of those, shared between the domains: the encoders' last n_shared
    #                    and the decoders' first n_shared (UNIT: 1 each)
    enc_norm: str = "layer"  # norm after the encoders' convs: "layer" (keeps global colour,
    #                          see the module docstring) | "instance" (UNIT) | "none"
    tanh: bool = True  # tanh output in [-1, 1] (images); False = linear output, for unbounded
    #                    data such as normalised log spectrograms
    ndf: int = 64  # discriminator width
    n_layers_d: int = 4  # stride-2 4x4 convs per discriminator scale (UNIT n_layer 4: 46 px
    #                      patches at each scale)
    num_scales: int = 3  # discriminator scales; the input is average-pooled by 2 between them
    gan_mode: str = "lsgan"  # "lsgan" (UNIT) | "vanilla"
    beta: float = 0.01  # weight of the KL terms (UNIT recon_kl_w and recon_kl_cyc_w); > 1 for
    #                     beta-VAE behaviour
    lambda_recon: float = 10.0  # weight of each within-domain reconstruction L1
    lambda_cycle: float = 10.0  # weight of each cycle reconstruction L1
    lambda_gan: float = 1.0  # weight of each adversarial loss
    lambda_identity: float = 0.5  # identity L1 weight, times lambda_cycle, as cyclegan's: a -> b
    #                               should leave a real b alone. Not in UNIT (0 gives UNIT's
    #                               losses); equal channel counts only. See the module docstring
    detail_skip: bool = False  # translations keep the input's fine detail: a -> b is
    #                            G_b(z) + (a - G_a(z)), the target decoding plus what a's own
    #                            VAE could not reconstruct (equal channel counts only)
    latent_gate: bool = False  # with detail_skip: the latent's change G_dst(z) - G_src(z) is
    #                            scaled by a learned gate per direction that starts at 0, so a
    #                            translation uses the latent only as far as that helps
    colour_path: int = 0  # with detail_skip: hidden width of a per-pixel colour/tone path per
    #                       direction, added to the translations (styletx.nn.ColourPath); 0 = none
    lr: float = 1e-4  # Adam learning rate (generator parts and discriminators)
    lr_d: float | None = None  # the discriminators' learning rate; None = lr. The fast
    #                            preset's small discriminators stay near chance on subtle
    #                            grades at 3e-4 (and still hover near it at its 1e-3)
    lr_colour: float | None = None  # learning rate of the colour paths and latent gates; None
    #                                 = lr. Per-pixel and scalar parameters that cannot invent
    #                                 blotches, so they can learn faster than the VAE
    colour_warmup: float = 0.0  # share of the run's steps over which the colour paths' and
    #                             gates' learning rate rises linearly from 0 to lr_colour (0 =
    #                             none). While the discriminators are near chance their
    #                             verdicts push these fast global parameters to a contrast
    #                             change that photos without one do not want; the warm-up lets
    #                             the verdicts settle first. A share, so short runs keep it short
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    weight_decay: float = 1e-4  # Adam (L2) weight decay, UNIT's
    lr_step: int = 100_000  # multiply the lr by lr_gamma every this many steps; 0 = constant
    lr_gamma: float = 0.5  # the factor (UNIT: halve every 100k steps)

    def __post_init__(self):
        for field, value, choices in (("enc_norm", self.enc_norm, ENC_NORMS),
                                      ("gan_mode", self.gan_mode, GAN_MODES)):
            if value not in choices:
                raise UsageError(f"vaegan: {field} must be one of {', '.join(choices)}, "
                                 f"not {value!r}")
        if min(self.ngf, self.ndf, self.n_layers_d, self.num_scales) < 1:
            raise UsageError("vaegan: ngf, ndf, n_layers_d and num_scales must be >= 1")
        if not 1 <= self.n_shared <= self.n_res:
            raise UsageError(f"vaegan: need 1 <= n_shared <= n_res (the shared blocks are part "
                             f"of the n_res), got n_shared {self.n_shared}, n_res {self.n_res}")
        if min(self.beta, self.lambda_recon, self.lambda_cycle, self.lambda_gan,
               self.lambda_identity, self.weight_decay, self.lr_step) < 0:
            raise UsageError("vaegan: beta, lambda_recon, lambda_cycle, lambda_gan, "
                             "lambda_identity, weight_decay and lr_step must be >= 0")
        if not 0.0 <= self.colour_warmup < 1.0:
            raise UsageError(f"vaegan: colour_warmup is a share of the run's steps, in [0, 1), "
                             f"not {self.colour_warmup}")
        for field in ("lr_d", "lr_colour"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float)) or value <= 0):
                raise UsageError(f"vaegan: {field} must be a number > 0 or null, not {value!r}")
        if self.lr <= 0:
            raise UsageError(f"vaegan: lr must be > 0, not {self.lr}")
        if self.colour_path < 0 or ((self.colour_path or self.latent_gate)
                                    and not self.detail_skip):
            raise UsageError("vaegan: colour_path must be >= 0; it and latent_gate need "
                             "detail_skip=true")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise UsageError(f"vaegan: lr_gamma must be in (0, 1], not {self.lr_gamma}")


# -- the latent -------------------------------------------------------------------------------
def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per element: ``0.5 * (mu^2 + exp(logvar) - 1 -
    logvar)``, the same shape as ``mu``; 0 exactly at the prior."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A sample of N(mu, exp(logvar)) as ``mu + exp(logvar / 2) * eps``, eps ~ N(0, I) (from
    ``generator`` when given), so gradients flow to mu and logvar (Kingma & Welling, 2014)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def pad_to_multiple(x: torch.Tensor, multiple: int = LATENT_STRIDE,
                    least: int = MIN_SIZE) -> torch.Tensor:
    """Pad ``(N, C, H, W)`` at the bottom and right up to multiples of ``multiple``, at least
    ``least``: reflect where the pad is smaller than the side, else replicate."""
    h, w = x.shape[-2:]
    pad_h = max(-h % multiple, least - h)
    pad_w = max(-w % multiple, least - w)
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode="reflect" if pad_w < w else "replicate")
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode="reflect" if pad_h < h else "replicate")
    return x


def latent_size(h: int, w: int) -> tuple[int, int]:
    """The latent's (h, w) for an ``h x w`` input: ceil(size / 4), at least 2."""
    return (max(-(-h // LATENT_STRIDE), MIN_SIZE // LATENT_STRIDE),
            max(-(-w // LATENT_STRIDE), MIN_SIZE // LATENT_STRIDE))


# -- networks ---------------------------------------------------------------------------------
def kaiming_init(net: nn.Module) -> nn.Module:
    """UNIT's generator init ("kaiming"): conv weights ~ He normal (fan in), biases 0; norm
    layers keep weight 1, bias 0. Measured: a tiny auto-encoder on smooth colour images reaches
    an L1 of 0.09 in 300 steps with it, 0.15 with styletx.nn.init_weights' N(0, 0.02)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # per example over (C, H, W), per-channel affine
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


class DomainEncoder(nn.Module):
    """A domain's private encoder: ``(N, in_ch, H, W) -> (N, 4ngf, H/4, W/4)``, H and W multiples
    of 4 and at least 8 (``pad_to_multiple``). UNIT's ContentEncoder without its last blocks."""

    def __init__(self, in_ch: int, ngf: int = 64, n_blocks: int = 3, norm: str = "layer"):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ngf, 7, padding=3, padding_mode="reflect"),
                                   _norm(norm, ngf), nn.ReLU(True)]
        for mult in (1, 2):  # down-sample twice
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 4, stride=2, padding=1,
                                 padding_mode="reflect"),
                       _norm(norm, ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, "instance", "reflect") for _ in range(n_blocks)]
        self.model = nn.Sequential(*layers)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SharedEncoder(nn.Module):
    """The encoders' shared end: ``(N, L, h, w) -> (N, 2L, h, w)``, the posterior's mean then its
    log-variance along the channels (split with ``.chunk(2, dim=1)``).

    The mean is the residual blocks' output, as UNIT's latent; the log-variance a 1x1 conv of it,
    zero-initialised, so a fresh model has UNIT's unit variance."""

    def __init__(self, dim: int, n_blocks: int = 1):
        super().__init__()
        self.blocks = nn.Sequential(*[ResnetBlock(dim, "instance", "reflect")
                                      for _ in range(n_blocks)])
        self.to_logvar = nn.Conv2d(dim, dim, 1)
        kaiming_init(self)
        nn.init.zeros_(self.to_logvar.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu = self.blocks(h)
        return torch.cat([mu, self.to_logvar(mu)], 1)


class DomainDecoder(nn.Module):
    """A domain's private decoder: ``(N, 4ngf, h, w) -> (N, out_ch, 4h, 4w)``. UNIT's Decoder
    without its first blocks: residual blocks, 2 x [nearest x2, 5x5 conv, layer norm, ReLU],
    7x7 conv, tanh or linear."""

    def __init__(self, out_ch: int, ngf: int = 64, n_blocks: int = 3, tanh: bool = True):
        super().__init__()
        layers: list[nn.Module] = [ResnetBlock(ngf * 4, "instance", "reflect")
                                   for _ in range(n_blocks)]
        for mult in (4, 2):  # up-sample twice: resize-conv, no checkerboard artifacts
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(ngf * mult, ngf * mult // 2, 5, padding=2,
                                 padding_mode="reflect"),
                       _norm("layer", ngf * mult // 2), nn.ReLU(True)]
        layers.append(nn.Conv2d(ngf, out_ch, 7, padding=3, padding_mode="reflect"))
        if tanh:
            layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)
        kaiming_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)


class MultiScaleDiscriminator(nn.Module):
    """UNIT's MsImageDis: ``(N, in_ch, H, W) -> [(N, 1, h_s, w_s)]``, one patch map per scale.

    At each scale a PatchGAN of ``n_layers`` reflect-padded 4x4 stride-2 convs (ndf, 2ndf, ...
    capped at 8ndf; LeakyReLU 0.2, no norm) and a 1x1 output conv: H/16 x W/16 logits for
    n_layers 4, each seeing 46x46 pixels of its scale. Between scales the input is average-
    pooled (3x3, stride 2, padding 1, not counting the padding), halving it (ceil).

    Not ``styletx.nn.PatchDiscriminator``: that is the CycleGAN 70x70 layout, whose two stride-1
    4x4 convs need at least 3 x 2**n_layers pixels per scale, more than the coarse scales of a
    64-frame spectrogram have; this one needs 2**n_layers (``min_size`` for the whole stack).
    """

    def __init__(self, in_ch: int, ndf: int = 64, n_layers: int = 4, num_scales: int = 3):
        super().__init__()
        self.n_layers, self.num_scales = n_layers, num_scales
        self.nets = nn.ModuleList()
        for _ in range(num_scales):
            layers: list[nn.Module] = []
            ch, width = in_ch, ndf
            for n in range(n_layers):
                width = ndf * min(2**n, 8)
                layers += [nn.Conv2d(ch, width, 4, stride=2, padding=1, padding_mode="reflect"),
                           nn.LeakyReLU(0.2, True)]
                ch = width
            layers.append(nn.Conv2d(ch, 1, 1))
            self.nets.append(nn.Sequential(*layers))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        init_weights(self)  # UNIT initialises its discriminators N(0, 0.02) ("gaussian")

    def min_size(self) -> int:
        """The smallest side every scale can take."""
        size = 2**self.n_layers
        for _ in range(self.num_scales - 1):  # ceil halving: 2s - 1 pools to s
            size = 2 * size - 1
        return size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, net in enumerate(self.nets):
            if i:
                x = self.downsample(x)
            outputs.append(net(x))
        return outputs


def _apply(net: nn.Module, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """``[net(x) for x in inputs]`` as one batched call when the shapes allow: every norm in
    these networks is per example, so the results are the same, at less cost on CPU."""
    if len({x.shape[1:] for x in inputs}) > 1:
        return [net(x) for x in inputs]
    return list(net(torch.cat(inputs)).split([len(x) for x in inputs]))


def _crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]


class Gate(nn.Module):
    """``x * g`` for one learned scalar g that starts at 0."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class Translation(nn.Module):
    """One direction as a module, on inputs padded to ``LATENT_STRIDE``: the source encoder's
    posterior mean (the first ``latent_channels`` of its output) decoded by the target decoder.
    With ``own_decoder`` (``detail_skip``) it is ``x + gate(G_dst(mu) - G_src(mu))`` instead:
    the input keeps the detail the latent does not hold, and takes the latent's change through
    ``gate`` (``latent_gate``; none: all of it); ``colour`` adds a per-pixel colour change of x
    (``colour_path``).
    """

    def __init__(self, encoder: nn.Module, latent_channels: int, decoder: nn.Module,
                 own_decoder: nn.Module | None = None, colour: nn.Module | None = None,
                 gate: nn.Module | None = None):
        super().__init__()
        self.encoder, self.decoder, self.own_decoder = encoder, decoder, own_decoder
        self.latent_channels, self.colour, self.gate = latent_channels, colour, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = self.encoder(x)[:, : self.latent_channels]
        y = self.decoder(mu)
        if self.own_decoder is not None:
            change = y - self.own_decoder(mu)
            y = x + (change if self.gate is None else self.gate(change))
        if self.colour is not None:
            y = y + self.colour(x)
        return y


class VAEGAN(LatentTranslator):
    name = "vaegan"
    tileable = True  # convolutions and instance/group norms only
    Config = VAEGANConfig
    paired = False
    latent_stride = LATENT_STRIDE
    presets = {
        "default": Preset(
            train=dict(size=256, batch_size=1),
            description="UNIT: VAE encoders/decoders (ngf 64, 2 down-samplings, 4 residual blocks "
                        "each, the last encoder and first decoder block shared), Gaussian latent "
                        "of 256 channels at 1/4 resolution, 3-scale PatchGANs (ndf 64, 4 layers), "
                        "LSGAN, recon 10, cycle 10, identity 5 (CycleGAN's; not in UNIT), KL "
                        "0.01, Adam 1e-4 (wd 1e-4) halved every 100k steps",
        ),
        # lr 1e-3 (measured on tests/test_vaegan.py's colour task, seeds 0-4, 300 steps): L1 to
        # the truth 0.14-0.17 x the untranslated input's; at 2e-3 one seed in three stays stuck
        # at 0.67 (a translation that fools D_b without keeping the pattern)
        "tiny": Preset(
            config=dict(ngf=8, n_res=2, ndf=8, n_layers_d=3, num_scales=2, lr=1e-3),
            train=dict(size=32, batch_size=4, steps=300),
            description="a CPU model for tests and smoke runs, about 120 ms a step on 2 "
                        "cores at 32 px, batch 4 (80 without the identity loss): ngf 8, 1 "
                        "private + 1 shared residual block per encoder/decoder, 2-scale "
                        "PatchGANs (ndf 8, 3 layers), lr 1e-3",
        ),
        "fast": Preset(
            config=dict(ngf=8, n_res=2, ndf=16, n_layers_d=3, num_scales=2, lr=3e-4, lr_d=1e-3,
                        lr_colour=1e-3, colour_warmup=1 / 3, lambda_identity=0.25,
                        detail_skip=True, latent_gate=True, colour_path=32),
            train=dict(size=64, batch_size=4, steps=3000),
            description="quality per CPU minute on photos: translations are the input plus "
                        "a per-pixel colour/tone path plus the latent's change through a gate "
                        "learned from 0 (detail_skip, latent_gate: they start as the identity "
                        "and keep the input's detail), ngf 8, 1 private + 1 shared residual "
                        "block, 2-scale PatchGANs (ndf 16), identity 0.25, lr 3e-4 (colour "
                        "paths, gates and discriminators 1e-3, the colour paths' and gates' "
                        "warmed up over the first third of the run), 64 px; pair with --minutes",
        ),
    }
    # Spectrograms (1, bins, frames): 64-frame segments with every bin and a linear output, as
    # normalised log spectrograms are not bounded. The networks take any bin count.
    domain_presets = {"audio": {
        "default": Preset(
            config=dict(tanh=False),
            train=dict(size=64, batch_size=1),
            description="UNIT for spectrograms: the default networks with a linear output, "
                        "64-frame segments of every bin",
        ),
        "tiny": Preset(
            config=dict(ngf=8, n_res=2, ndf=8, n_layers_d=3, num_scales=2, lr=1e-3,
                        tanh=False),
            train=dict(size=64, batch_size=4, steps=300),
            description="a CPU voice model for tests and smoke runs, about 0.3 s a step on 2 "
                        "cores at 80 bins x 64 frames, batch 4: the tiny networks with a "
                        "linear output",
        ),
    }}

    def __init__(self, config: VAEGANConfig, channels_a: int, channels_b: int):
        super().__init__(config, channels_a, channels_b)
        c = config
        self.use_identity = c.lambda_identity > 0 and channels_a == channels_b
        self.use_detail = c.detail_skip and channels_a == channels_b
        dim, private = 4 * c.ngf, c.n_res - c.n_shared
        self.enc_a = DomainEncoder(channels_a, c.ngf, private, c.enc_norm)
        self.enc_b = DomainEncoder(channels_b, c.ngf, private, c.enc_norm)
        self.shared_enc = SharedEncoder(dim, c.n_shared)
        self.shared_dec = nn.Sequential(*[ResnetBlock(dim, "instance", "reflect")
                                          for _ in range(c.n_shared)])
        kaiming_init(self.shared_dec)
        self.dec_a = DomainDecoder(channels_a, c.ngf, private, c.tanh)
        self.dec_b = DomainDecoder(channels_b, c.ngf, private, c.tanh)
        if self.use_detail:  # equal decoders: a fresh model translates to exactly the input
            self.dec_b.load_state_dict(self.dec_a.state_dict())
        self.colour = self.gate = None
        if self.use_detail and c.colour_path:
            self.colour = nn.ModuleDict({d: ColourPath(channels_a, c.colour_path)
                                         for d in DIRECTIONS})
        if self.use_detail and c.latent_gate:
            self.gate = nn.ModuleDict({d: Gate() for d in DIRECTIONS})
        self.D_a = MultiScaleDiscriminator(channels_a, c.ndf, c.n_layers_d, c.num_scales)
        self.D_b = MultiScaleDiscriminator(channels_b, c.ndf, c.n_layers_d, c.num_scales)
        # Each domain's whole encoder and decoder; the shared parts are the same modules.
        self.encoders = {"a": nn.Sequential(self.enc_a, self.shared_enc),
                         "b": nn.Sequential(self.enc_b, self.shared_enc)}
        self.decoders = {"a": nn.Sequential(self.shared_dec, self.dec_a),
                         "b": nn.Sequential(self.shared_dec, self.dec_b)}
        self.gan_loss = GANLoss(c.gan_mode)

    def networks(self) -> dict[str, nn.Module]:
        return {"enc_a": self.enc_a, "enc_b": self.enc_b, "shared_enc": self.shared_enc,
                "shared_dec": self.shared_dec, "dec_a": self.dec_a, "dec_b": self.dec_b,
                "D_a": self.D_a, "D_b": self.D_b,
                **{name: net for name, net in (("colour", self.colour), ("gate", self.gate))
                   if net is not None}}

    @property
    def latent_channels(self) -> int:
        return 4 * self.config.ngf

    # -- training -------------------------------------------------------------------------
    def configure_optimizers(self, total_steps: int) -> None:
        c = self.config

        def optimizer(nets: list[nn.Module], lr: float,
                      fast: list[nn.Module] = ()) -> torch.optim.Optimizer:
            slow = [p for net in nets for p in net.parameters()]
            quick = [p for net in fast for p in net.parameters()]
            if c.lr_colour is None or not quick:  # one group: runs saved before lr_colour
                return adam(slow + quick, lr, (c.beta1, c.beta2), c.weight_decay)
            groups = [{"params": slow}, {"params": quick, "lr": c.lr_colour}]
            return adam(groups, lr, (c.beta1, c.beta2), c.weight_decay)

        # One optimizer for every generator part, one for both discriminators, as UNIT.
        self.optimizers = {
            "G": optimizer([self.enc_a, self.enc_b, self.shared_enc, self.shared_dec, self.dec_a,
                            self.dec_b], c.lr,
                           [net for net in (self.colour, self.gate) if net is not None]),
            "D": optimizer([self.D_a, self.D_b], c.lr if c.lr_d is None else c.lr_d),
        }

        def factor(step: int) -> float:  # UNIT's "step" policy; a function, so a resumed run
            return c.lr_gamma ** (step // c.lr_step) if c.lr_step else 1.0  # follows the config

        warmup = max(1, round(c.colour_warmup * total_steps))

        def warmed(step: int) -> float:  # the colour group's: the warm-up, then the policy
            return factor(step) * min(1.0, (step + 1) / warmup)

        def factors(opt: torch.optim.Optimizer) -> list:  # the quick group is the second (with
            return [factor, warmed][:len(opt.param_groups)]  # no warm-up, warmed is factor)

        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, factors(opt))
                           for name, opt in self.optimizers.items()}

    def _check_training_shape(self, x: torch.Tensor) -> None:
        """A clear error for crops the discriminators cannot take, before they fail inside."""
        least = self.D_a.min_size()
        h, w = x.shape[-2:]
        if min(h, w) < least:
            c = self.config
            raise UsageError(f"vaegan: {h}x{w} training crops are too small for the "
                             f"discriminators ({c.num_scales} scales of {c.n_layers_d} layers "
                             f"need at least {least}x{least}); use a larger --size or fewer "
                             f"num_scales / n_layers_d")

    def _gan(self, outputs: list[torch.Tensor], real: bool) -> torch.Tensor:
        return sum(self.gan_loss(out, real) for out in outputs)

    def _judge(self, net: MultiScaleDiscriminator, real: torch.Tensor,
               fake: torch.Tensor) -> torch.Tensor:
        """A discriminator's loss on real and generated images, summed over its scales; one
        batched call when the shapes match (it has no norm, so batching changes nothing)."""
        if real.shape[1:] != fake.shape[1:]:
            return self._gan(net(real), True) + self._gan(net(fake), False)
        outputs = [out.split([len(real), len(fake)]) for out in net(torch.cat([real, fake]))]
        return (self._gan([r for r, _ in outputs], True)
                + self._gan([f for _, f in outputs], False))

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.config
        real_a = batch["a"].to(self.device, non_blocking=True)
        real_b = batch["b"].to(self.device, non_blocking=True)
        self._check_training_shape(real_a)
        self._check_training_shape(real_b)
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]

        with self.autocast():
            out = self.forward_for("G", self._generate, real_a, real_b)
        fake_a, fake_b = out["fake_a"], out["fake_b"]

        # Discriminators first (UNIT's order), on the translations detached.
        opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            loss_d_a, loss_d_b = self.forward_for(
                "D", lambda: (self._judge(self.D_a, real_a, fake_a.detach()),
                              self._judge(self.D_b, real_b, fake_b.detach())))
        (c.lambda_gan * (loss_d_a + loss_d_b)).backward()
        opt_d.step()

        # Then every generator part, the discriminators frozen.
        set_requires_grad([self.D_a, self.D_b], False)
        opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            losses = {
                "G_adv_a": c.lambda_gan * self._gan(self.D_b(fake_b), True),  # a -> b fools D_b
                "G_adv_b": c.lambda_gan * self._gan(self.D_a(fake_a), True),
            }
        kl = {key: c.beta * kl_normal(*(t.float() for t in out[f"stats_{key}"])).mean()
              for key in ("a", "b", "cyc_a", "cyc_b")}
        losses |= {
            "recon_a": c.lambda_recon * F.l1_loss(out["rec_a"].float(), real_a),
            "recon_b": c.lambda_recon * F.l1_loss(out["rec_b"].float(), real_b),
            "kl_a": kl["a"], "kl_b": kl["b"],
            "cycle_a": c.lambda_cycle * F.l1_loss(out["cyc_a"].float(), real_a),
            "cycle_b": c.lambda_cycle * F.l1_loss(out["cyc_b"].float(), real_b),
            "kl_cyc_a": kl["cyc_a"], "kl_cyc_b": kl["cyc_b"],
        }
        if self.use_identity:
            losses |= self._identity_losses(real_a, real_b)
        sum(losses.values()).backward()
        opt_g.step()
        set_requires_grad([self.D_a, self.D_b], True)

        losses |= {"D_a": loss_d_a, "D_b": loss_d_b}
        values = torch.stack([v.detach().float().to(self.device) for v in losses.values()])
        return dict(zip(losses, values.tolist()))  # one device sync, not twelve

    def _generate(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, Any]:
        """The generator parts' forward pass: reconstructions rec_*, translations fake_a (b
        translated to A) and fake_b, cycles cyc_*, and the posteriors' (mu, logvar) of the
        inputs (stats_a, stats_b) and of the translations (stats_cyc_a: of fake_b, on a's way
        back)."""
        size_a, size_b = real_a.shape[-2:], real_b.shape[-2:]
        # Encode both domains into the shared space and sample z (reparameterized).
        stats_a, stats_b = _apply(self.shared_enc, self.enc_a(pad_to_multiple(real_a)),
                                  self.enc_b(pad_to_multiple(real_b)))
        (mu_a, logvar_a), (mu_b, logvar_b) = stats_a.chunk(2, 1), stats_b.chunk(2, 1)
        z_a, z_b = reparameterize(mu_a, logvar_a), reparameterize(mu_b, logvar_b)
        # Decode each z with both decoders: reconstructions and translations.
        s_a, s_b = _apply(self.shared_dec, z_a, z_b)
        rec_a, fake_a = _apply(self.dec_a, s_a, s_b)
        fake_b, rec_b = _apply(self.dec_b, s_a, s_b)
        rec_a, fake_a = _crop(rec_a, size_a), _crop(fake_a, size_b)
        fake_b, rec_b = _crop(fake_b, size_a), _crop(rec_b, size_b)
        if self.use_detail:  # the input plus the latent's change, as Translation
            fake_b = real_a + self._gated("a2b", fake_b - rec_a.detach())
            fake_a = real_b + self._gated("b2a", fake_a - rec_b.detach())
        if self.colour is not None:
            fake_b = fake_b + self.colour["a2b"](real_a)
            fake_a = fake_a + self.colour["b2a"](real_b)
        # Cycle: encode the translations with the other domain's encoder, decode back.
        stats_ab, stats_ba = _apply(self.shared_enc, self.enc_b(pad_to_multiple(fake_b)),
                                    self.enc_a(pad_to_multiple(fake_a)))
        (mu_ab, logvar_ab), (mu_ba, logvar_ba) = stats_ab.chunk(2, 1), stats_ba.chunk(2, 1)
        s_ab, s_ba = _apply(self.shared_dec, reparameterize(mu_ab, logvar_ab),
                            reparameterize(mu_ba, logvar_ba))
        return {"rec_a": rec_a, "rec_b": rec_b, "fake_a": fake_a, "fake_b": fake_b,
                "cyc_a": _crop(self.dec_a(s_ab), size_a), "cyc_b": _crop(self.dec_b(s_ba), size_b),
                "stats_a": (mu_a, logvar_a), "stats_b": (mu_b, logvar_b),
                "stats_cyc_a": (mu_ab, logvar_ab), "stats_cyc_b": (mu_ba, logvar_ba)}

    def _identity_losses(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict:
        """``idt_a = |G_b(E_a(b)) - b|`` (a -> b should leave a real b alone) and ``idt_b``,
        weighted; from the posterior means, no sampling."""
        w = self.config.lambda_cycle * self.config.lambda_identity
        with self.autocast():
            same_b = _crop(self._translation("a", "b")(pad_to_multiple(real_b)),
                           real_b.shape[-2:])
            same_a = _crop(self._translation("b", "a")(pad_to_multiple(real_a)),
                           real_a.shape[-2:])
        return {"idt_a": w * F.l1_loss(same_b.float(), real_b),
                "idt_b": w * F.l1_loss(same_a.float(), real_a)}

    # -- inference ------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, side: str, what: str) -> None:
        if side not in SIDES:
            raise ValueError(f"side must be 'a' or 'b', not {side!r}")
        if x.ndim != 4 or x.shape[1] != self.channels[side]:
            raise ValueError(f"{what} expects (N, {self.channels[side]}, H, W), "
                             f"got {tuple(x.shape)}")

    def _encode(self, x: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.encoders[side](pad_to_multiple(x.to(self.device, torch.float32)))
        mu, logvar = stats.chunk(2, 1)
        return mu, logvar

    def encode_latent(self, x: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C_side, H, W) -> (mu, logvar)``, each ``(N, latent_channels, ceil(H/4),
        ceil(W/4))`` (at least 2 x 2), float32 on x's device, no gradients; no sampling."""
        self._check_input(x, side, f"encode_latent({side!r})")
        with torch.no_grad(), self.autocast():
            mu, logvar = self._encode(x, side)
        return mu.float().to(x.device), logvar.float().to(x.device)

    def decode_latent(self, z: torch.Tensor, side: str,
                      size: tuple[int, int] | None = None) -> torch.Tensor:
        """``(N, latent_channels, h, w) -> (N, C_side, 4h, 4w)``, cropped to ``size`` (H, W)
        when given; float32 on z's device, no gradients. z ~ N(0, I) samples the domain."""
        if side not in SIDES:
            raise ValueError(f"side must be 'a' or 'b', not {side!r}")
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"decode_latent expects (N, {self.latent_channels}, h, w), "
                             f"got {tuple(z.shape)}")
        with torch.no_grad(), self.autocast():
            y = self.decoders[side](z.to(self.device, torch.float32))
        if size is not None:
            y = _crop(y, size)
        return y.float().to(z.device)

    def translate(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """``(N, C_src, H, W) -> (N, C_dst, H, W)`` float32 on x's device, any H and W: the
        source encoder's posterior MEAN (no sampling, so deterministic) decoded by the target's
        decoder (with ``detail_skip``, plus the input's detail, see ``Translation``)."""
        src, dst = direction_sides(direction)
        self._check_input(x, src, direction)
        with torch.no_grad(), self.autocast():
            x32 = pad_to_multiple(x.to(self.device, torch.float32))
            y = _crop(self._translation(src, dst)(x32), x.shape[-2:])
        return y.float().to(x.device)

    def _gated(self, direction: str, change: torch.Tensor) -> torch.Tensor:
        return change if self.gate is None else self.gate[direction](change)

    def _translation(self, src: str, dst: str) -> Translation:
        return Translation(self.encoders[src], self.latent_channels, self.decoders[dst],
                           self.decoders[src] if self.use_detail else None,
                           self.colour[f"{src}2{dst}"] if self.colour is not None else None,
                           self.gate[f"{src}2{dst}"] if self.gate is not None else None)

    def export_module(self, direction: str) -> nn.Module:
        """``translate`` as one module (``Translation``) behind ``pad_to_multiple``'s padding
        written without a branch on the size."""
        src, dst = direction_sides(direction)
        return styletx.PadCrop(self._translation(src, dst), multiple=LATENT_STRIDE,
                               least=MIN_SIZE)

    def negative_elbo(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """Outlier score per example, ``(N,)`` float32 on x's device: higher = less like the
        domain's training data. The VAE part of the training loss, per example:

            lambda_recon * mean |x - G(mu)|  +  beta * mean KL(q(z|x) || N(0, I))

        (means over the input's and the latent's elements). That is a negative ELBO: with a
        Laplace decoder of scale ``s = beta * |x| / (lambda_recon * |z|)`` (|x|, |z| the element
        counts) the negative ELBO is ``sum |x - G(z)| / s + sum KL`` up to a constant, and the
        line above is it times ``beta / |z|``. So the score weighs reconstruction against KL as
        the model was trained to, and is comparable across input sizes. The reconstruction uses
        the posterior mean (a one-point estimate of the expectation) and the KL is closed form,
        so the score is deterministic. Measured: weighting the two terms 1:1 instead (per input
        element) let the KL, which barely tells inputs apart, swamp the reconstruction error,
        which does (see ``styletx.tools.latent``)."""
        self._check_input(x, side, f"negative_elbo({side!r})")
        c = self.config
        with torch.no_grad(), self.autocast():
            mu, logvar = self._encode(x, side)
            rec = _crop(self.decoders[side](mu), x.shape[-2:])
        x32 = x.to(self.device, torch.float32)
        l1 = (rec.float() - x32).abs().flatten(1).mean(1)
        kl = kl_normal(mu.float(), logvar.float()).flatten(1).mean(1)
        return (c.lambda_recon * l1 + c.beta * kl).to(x.device)

    def preview(self, batch: dict[str, torch.Tensor]) -> list[list[tuple[str, torch.Tensor]]]:
        """Per side: (input, translated as ``translate`` translates it, reconstructed through
        its own VAE from the posterior mean). The translation is not the target decoder's raw
        output: with ``detail_skip`` (the fast preset) that was a blurred, blocky tile where
        ``convert`` gives a sharp one, and a user judged the run by it."""
        rows = []
        for src, dst in (("a", "b"), ("b", "a")):
            x = batch[src][:1]
            y = self.translate(x, f"{src}2{dst}")
            with torch.no_grad(), self.autocast():
                mu, _ = self._encode(x, src)
                rec = _crop(self.decoders[src](mu), x.shape[-2:]).float().to(x.device)
            rows.append([(src, x[0]), (dst, y[0]), (src, rec[0])])
        return rows


@styletx.hookimpl
def register_translators(register):
    register(VAEGAN)
