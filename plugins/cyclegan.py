"""CycleGAN: unpaired translation with two generators and two discriminators.

Zhu et al., "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks"
(2017). Naming follows the reference implementation (pytorch-CycleGAN-and-pix2pix):

    G_A: A -> B    G_B: B -> A
    D_A judges B-domain images (real b vs G_A(a))    D_B judges A-domain images (real a vs G_B(b))
    cycle_A = |G_B(G_A(a)) - a|    idt_A = |G_A(b) - b|  (G_A should leave a real b alone)

Losses per step (reference order): generators first, with the discriminators frozen,
    G = gan(D_A(G_A(a)), real) + gan(D_B(G_B(b)), real)
        + lambda_cycle * (cycle_A + cycle_B) + lambda_cycle * lambda_identity * (idt_A + idt_B)
then each discriminator on real images and on fakes drawn from a history pool, times 0.5.

Two generators: ``ResnetGenerator`` for images (the reference) and ``VoiceGenerator`` for
spectrograms (CycleGAN-VC2's "2-1-2D" network, Kaneko et al., 2019), which the audio presets
pick. For voice CycleGAN-VC2 also switches the identity loss off after ``identity_steps`` and
gives the discriminators their own learning rate ``lr_d``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import styletx
from styletx import DIRECTIONS, Preset, UsageError, direction_sides
from styletx.nn import (
    GAN_MODES,
    NORMS,
    UPSAMPLES,
    ColourPath,
    GANLoss,
    GatedConv,
    GatedResBlock1d,
    ImagePool,
    PatchDiscriminator,
    ResnetBlock,
    TimeSmoothing,
    Upsample,
    WideConv2d,
    adam,
    conv_bias,
    diff_augment,
    init_weights,
    linear_decay,
    norm_layer,
    r1_penalty,
    set_requires_grad,
    sliced_transport,
    sliced_wasserstein,
)

if TYPE_CHECKING:  # imported where used: image runs need no audio modules
    from styletx.audio.matching import FrameMatching

GENERATORS = ("resnet", "voice", "local")
POST_FILTER_FRAMES = 32_768  # the post-filter is fitted on at most this many frames (~6 min of
#                              voice at 22.05 kHz, hop 256): more than its 1000 steps can use
POST_FILTER_CROP = 1024  # ... in pieces of at most this many frames (a long recording's
#                          translation stays small in memory)


@dataclasses.dataclass
class CycleGANConfig:
    generator: str = "resnet"  # "resnet" (images, the reference) | "voice" (spectrograms:
    #                            CycleGAN-VC2's 2-1-2D network, see VoiceGenerator) | "local"
    #                            (images: input + colour path + a few full-resolution convs,
    #                            see LocalGenerator)
    bins: int = 80  # voice generator only: frequency bins of the spectrograms it is built for
    #                 (the encoder's: 128 for the default mel, n_fft/2+1 for stft); fixed per run
    ngf: int = 64  # generator width (channels after the first conv)
    ndf: int = 64  # discriminator width
    n_blocks: int = 9  # generator residual blocks; the reference uses 6 below 256 px
    n_layers_d: int = 3  # PatchGAN stride-2 layers: 3 = 70x70 patches, 2 = 34x34
    norm: str = "instance"  # "instance" | "batch" | "none"
    upsample: str = "transpose"  # "transpose" (reference) | "resize" (nearest x2 + conv:
    #                               no checkerboard artifacts) | "shuffle" (conv + PixelShuffle,
    #                               CycleGAN-VC2)
    residual: bool = False  # generator outputs input + learned change, starting as the
    #                         identity (equal channel counts only). Off: on the colour test it
    #                         stays stuck at the identity, see ResnetGenerator; on synthetic
    #                         voices (tiny, 300 steps) MCD 3.9 dB against 3.1 without
    smooth_frames: int = 1  # voice generator: when converting (``translate``, exported
    #                         models; not in training) its output is smoothed along time over
    #                         this many frames (a Hann window; 1 = not at all). A briefly
    #                         trained model's spectrogram flickers from frame to frame; over 3
    #                         frames, on two `fast` runs (benchmarks/RESULTS.md, Voice): DNSMOS
    #                         1.45 -> 1.63 and 1.36 -> 1.50, MCD down 0.05-0.08 dB, speaker
    #                         similarity 0.814 -> 0.814 and 0.813 -> 0.804. Not in the encoder,
    #                         whose real spectrograms it would blur
    post_filter_epochs: float = 0.0  # voice generator: after the last step, a post-filter of
    #                                  its output (a small network along time) is fitted on the
    #                                  cycle's reconstructions of each voice's own recordings,
    #                                  G_A(G_B(b)) -> b, over this many passes (at most 1000
    #                                  steps on up to POST_FILTER_FRAMES frames: ~10 s a
    #                                  direction on one core); 0 = none. It learns what the
    #                                  generator's output gets wrong that a real spectrogram has
    #                                  right. The `fast` preset: 60, which fills the 1000
    #                                  steps with two minutes of speech (RESULTS.md, Voice)
    match_k: int = 0  # voice generator: when converting, after the post-filter, each output
    #                   frame replaced by the mean of the match_k frames of the target's
    #                   training recordings whose neighbourhoods are nearest to its own
    #                   (styletx.audio.matching, kNN-VC's matching set; kept in the run,
    #                   fitted after the last step); 0 = none. The `fast` preset: 16, which
    #                   took 0.2-0.25 dB off its MCD in two runs (RESULTS.md, "Frame matching")
    match_context: int = 4  # frames on each side of a frame that its match compares too
    match_join: float = 0.0  # > 0: each output frame becomes one of its match_k nearest,
    #                          along the path that best follows on from frame to frame (unit
    #                          selection, FrameMatching; the match model's setting of that name)
    colour_path: int = 0  # ResNet generator with ``residual``: hidden width of a per-pixel
    #                       colour/tone path beside the spatial one (styletx.nn.ColourPath);
    #                       0 = none. Global grades are learned by it in a few hundred steps
    highpass: int = 0  # local generator: its local path's change minus that change's mean
    #                    over highpass x highpass pixels (odd), so it changes detail only and
    #                    leaves colour and tone to the colour path; 0 = off (see LocalGenerator)
    spectral_norm: bool = False  # spectral norm on every discriminator conv
    gan_mode: str = "lsgan"  # "lsgan" (reference) | "vanilla"
    lambda_cycle: float = 10.0  # weight of each cycle-consistency L1 loss
    lambda_identity: float = 0.5  # identity L1 weight, times lambda_cycle; 0 switches it off
    identity_steps: int = 0  # identity loss only for the first this many steps; 0 = always
    #                          (CycleGAN-VC2: 10k, it keeps the linguistic content early on)
    pool_size: int = 50  # generated images remembered for the discriminators; 0 = none
    lr: float = 2e-4  # Adam learning rate of the generators (and discriminators, see lr_d)
    lr_d: float | None = None  # discriminators' learning rate; None = lr (CycleGAN-VC2: 1e-4)
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    decay_start: float = 0.5  # fraction of the steps at constant lr before the linear decay to 0
    # Against a discriminator that memorises a small training set (issue 14: the fast preset's
    # D wins after ~600 steps on 35 tiles a side, and the generators drift after it):
    diffaug: float = 0.0  # DiffAugment (styletx.nn.diff_augment) of every image D sees, real
    #                       and generated, in both steps: random shifts up to this fraction of
    #                       the size (e.g. 0.125); 0 = off. No colour augmentation
    cutout: float = 0.0  # and a zeroed square of this fraction of the size (e.g. 0.5); 0 = off
    lambda_sw: float = 0.0  # weight of a sliced Wasserstein loss (styletx.nn.sliced_wasserstein)
    #                         between each generator's outputs and real images of its output
    #                         domain: a distribution match no discriminator can memorise away;
    #                         0 = off
    sw_patch: int = 1  # its neighbourhood: 1 = pixel colours (global grades), 3 = 3x3
    #                    patches, 0 = whole columns (spectrogram frames)
    sw_pool: int = 32  # real images of each side remembered as its reference distribution
    sw_region: int = 1  # the colours compared are the means of sw_region x sw_region pixel
    #                     blocks (1 = each pixel's): detail (sharpness, grain, texture) then
    #                     does not count as a colour difference, and a grade is learnt from
    #                     the colours of regions (RESULTS.md, "Colours of regions")
    sw_transport: bool = False  # and, with the same weight, each output pixel pulled towards
    #                             where the transport of the whole domain sends it
    #                             (styletx.nn.sliced_transport: generated images remembered
    #                             too): on thousands of different photos the batch's pulls
    #                             cancel out and nothing is learnt (RESULTS.md, "Many files")
    r1: float = 0.0  # R1 penalty weight gamma on D's gradient at real images (e.g. 1); 0 = off
    r1_every: int = 4  # R1 lazily, every this many steps (weighted by it, as StyleGAN2)
    lr_colour: float | None = None  # learning rate of the generators' colour paths; None = lr
    ema: float = 0.0  # decay of a moving average of the generators' weights (e.g. 0.999), which
    #                   converts, previews and exports in their place; 0 = none (see WeightEMA)

    def __post_init__(self):
        for field, value, choices in (("generator", self.generator, GENERATORS),
                                      ("norm", self.norm, NORMS),
                                      ("upsample", self.upsample, UPSAMPLES),
                                      ("gan_mode", self.gan_mode, GAN_MODES)):
            if value not in choices:
                raise UsageError(f"cyclegan: {field} must be one of {', '.join(choices)}, "
                                 f"not {value!r}")
        if min(self.ngf, self.ndf, self.n_layers_d) < 1 or self.n_blocks < 0:
            raise UsageError("cyclegan: ngf, ndf and n_layers_d must be >= 1, n_blocks >= 0")
        if self.lr_d is not None and (isinstance(self.lr_d, bool)
                                      or not isinstance(self.lr_d, (int, float))):
            raise UsageError(f"cyclegan: lr_d must be a number or null, not {self.lr_d!r}")
        if self.lr <= 0 or (self.lr_d is not None and self.lr_d <= 0):
            raise UsageError("cyclegan: lr and lr_d must be > 0")
        if min(self.pool_size, self.lambda_cycle, self.lambda_identity, self.identity_steps) < 0:
            raise UsageError("cyclegan: pool_size, lambda_cycle, lambda_identity and "
                             "identity_steps must be >= 0")
        if self.post_filter_epochs < 0 or (self.post_filter_epochs
                                           and self.generator != "voice"):
            raise UsageError("cyclegan: post_filter_epochs must be >= 0, and is for the voice "
                             "generator (generator=voice)")
        for name in ("match_k", "match_context"):
            if getattr(self, name) < 0:
                raise UsageError(f"cyclegan: {name} must be >= 0, not {getattr(self, name)}")
        if not 0 <= self.match_join < math.inf:
            raise UsageError(f"cyclegan: match_join must be a number >= 0, not {self.match_join}")
        if self.smooth_frames > 1 and self.generator != "voice":
            raise UsageError(f"cyclegan: smooth_frames is for voice runs, whose generator is "
                             f"'voice'; this one's is {self.generator!r}")
        if self.match_k and self.generator != "voice":
            raise UsageError(f"cyclegan: frame matching (match_k) is for voice runs, whose "
                             f"generator is 'voice'; this one's is {self.generator!r}")
        from styletx.audio.matching import MAX_CONTEXT

        if self.match_context > MAX_CONTEXT:
            raise UsageError(f"cyclegan: match_context must be at most {MAX_CONTEXT} frames, "
                             f"not {self.match_context}")
        if self.match_join and not self.match_k:
            raise UsageError("cyclegan: match_join chooses among the match_k nearest frames; "
                             "it needs frame matching (match_k > 0)")
        if self.bins < 1 or self.smooth_frames < 1:
            raise UsageError(f"cyclegan: bins and smooth_frames must be >= 1, not {self.bins} "
                             f"and {self.smooth_frames}")
        if self.colour_path < 0 or (self.colour_path and not self.residual
                                    and self.generator == "resnet"):
            raise UsageError("cyclegan: colour_path must be >= 0, and needs residual=true (it "
                             "adds a change to the input)")
        if self.highpass < 0 or (self.highpass and self.highpass % 2 == 0):
            raise UsageError(f"cyclegan: highpass must be 0 or an odd size, not {self.highpass}")
        if not (0.0 <= self.diffaug < 0.5 and 0.0 <= self.cutout < 1.0):
            raise UsageError("cyclegan: diffaug must be in [0, 0.5) and cutout in [0, 1)")
        if self.lambda_sw < 0 or self.sw_patch < 0 or self.sw_pool < 1:
            raise UsageError("cyclegan: lambda_sw and sw_patch must be >= 0, sw_pool >= 1")
        if self.sw_region < 1 or (self.sw_region > 1 and self.sw_patch == 0):
            raise UsageError(f"cyclegan: sw_region must be >= 1, and 1 with sw_patch=0 (whole "
                             f"columns keep every bin), not {self.sw_region}")
        if self.r1 < 0 or self.r1_every < 1:
            raise UsageError("cyclegan: r1 must be >= 0 and r1_every >= 1")
        if self.lr_colour is not None and (isinstance(self.lr_colour, bool)
                                           or not isinstance(self.lr_colour, (int, float))
                                           or self.lr_colour <= 0):
            raise UsageError(f"cyclegan: lr_colour must be a number > 0 or null, "
                             f"not {self.lr_colour!r}")
        if not 0.0 <= self.ema < 1.0:
            raise UsageError(f"cyclegan: ema must be in [0, 1), not {self.ema}")
        if not 0.0 <= self.decay_start <= 1.0:
            raise UsageError(f"cyclegan: decay_start must be in [0, 1], not {self.decay_start}")


class ResnetGenerator(nn.Module):
    """``(N, in_ch, H, W) -> (N, out_ch, H, W)``, H and W divisible by 4.

    Reflect-padded 7x7 conv, two stride-2 3x3 convs (ngf -> 2ngf -> 4ngf), ``n_blocks``
    residual blocks, two x2 up-samplings, 7x7 conv.

    Output head: the reference ends in tanh, so outputs lie in [-1, 1]. With ``residual`` (and
    in_ch == out_ch) the head instead predicts a change that is added to the input, with no
    tanh: a squashing function would either need atanh of the input (unbounded at +-1, where
    white and black pixels sit) or clamp gradients away; the discriminator and the cycle loss
    keep outputs in the data's range, and decoders clip. The head's conv starts at zero, so a
    fresh generator is exactly the identity, and the change is learned from there (the
    zero-init trick of residual branches; Adam still moves the body from the first step,
    because its updates do not scale with the tiny gradients behind a zero layer).

    Measured (tests/test_cyclegan.py's red<->blue task, tiny preset, 150 steps): the residual
    generator never leaves the identity while the identity loss is on (L1 to the truth 0.52 =
    untranslated; the reference head reaches 0.09). The identity and cycle L1 losses both have
    a kink at exactly zero, and at the identity start their pull (up to lambda per pixel)
    outweighs the adversarial gradient; with the identity loss off it escapes in some seeds
    only. Hence ``residual`` is an option, off by default: it suits tasks whose answer is a
    small change, not large colour or texture changes.
    """

    def __init__(self, in_ch: int, out_ch: int, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", upsample: str = "transpose", residual: bool = False,
                 colour_path: int = 0):
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        self.residual = residual and in_ch == out_ch
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, ngf, 7, padding=3, padding_mode="reflect", bias=bias),
            make_norm(ngf), nn.ReLU(True),
        ]
        for mult in (1, 2):  # down-sample twice
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                       make_norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm, padding="reflect") for _ in range(n_blocks)]
        for mult in (4, 2):  # and back up
            layers.append(Upsample(ngf * mult, ngf * mult // 2, mode=upsample, norm=norm))
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(ngf, out_ch, 7, padding=3, padding_mode="reflect")
        init_weights(self)
        if self.residual:
            nn.init.zeros_(self.head.weight)
        self.colour = ColourPath(in_ch, colour_path) if self.residual and colour_path else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        change = self.head(self.body(x))
        if self.colour is not None:
            change = change + self.colour(x)
        if self.residual:
            return x + change
        return torch.tanh(change)


class LocalGenerator(nn.Module):
    """``(N, C, H, W) -> (N, C, H, W)`` for any H, W >= 2: the input plus two changes that
    start at zero, a per-pixel colour/tone path (``ColourPath``, hidden width ``colour_path``)
    and a local path of ``1 + n_blocks`` 3x3 convs at full resolution (``ngf`` channels,
    LeakyReLU, no norm) that sees only a (3 + 2 n_blocks)-pixel neighbourhood.

    Why: on real photographs the ResNet generator's down-sampled body, free to change large
    regions, invented blotches and colour casts in the minutes a CPU user trains (held-out PSNR
    below the untouched input). Global grades need only the colour path; sharpening, softening
    and texture need only a neighbourhood; neither needs to move a region's colour as a whole.
    Several times cheaper per step than the ResNet generator, so more steps fit in a budget.

    ``highpass`` k: the local path's change minus its mean over k x k pixels (replicate
    padding), so that path alters detail only: whatever it would change smoothly over k pixels
    or more (a colour or tone shift of a region) is removed, and left to the colour path.
    Measured (benchmarks/quality.py, 3-minute runs, identity 0.2, averaged weights): with both
    paths free, the local path learned part of the split-tone grade itself and cost 2 dB
    against the colour path alone (29.2 against 31.2 dB), and on the sharpening task both paths
    shifted colours (26.9 dB, input 29.0); high-passed, 30.4 and 29.1 dB, and the local path
    alone sharpened to 32.9 dB. Off in the fast preset: it does not stop the colour path's drift
    on sharpening in 8-minute runs (-2.3 dB at identity 0.5, -8.5 at 0.2; see
    benchmarks/quality/EXPERIMENTS-issue14.md).
    """

    def __init__(self, channels: int, ngf: int = 16, n_blocks: int = 2, colour_path: int = 32,
                 highpass: int = 0):
        super().__init__()
        self.highpass = highpass
        layers: list[nn.Module] = [nn.Conv2d(channels, ngf, 3, padding=1, padding_mode="reflect"),
                                   nn.LeakyReLU(0.2)]
        for _ in range(n_blocks):
            layers += [nn.Conv2d(ngf, ngf, 3, padding=1, padding_mode="reflect"),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ngf, channels, 3, padding=1, padding_mode="reflect"))
        self.local = nn.Sequential(*layers)
        nn.init.zeros_(self.local[-1].weight)
        nn.init.zeros_(self.local[-1].bias)
        self.colour = ColourPath(channels, colour_path) if colour_path else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        change = self.local(x)
        if self.highpass:  # detail only: changes smoother than k pixels are taken out
            k = self.highpass
            mean = F.avg_pool2d(F.pad(change, (k // 2,) * 4, mode="replicate"), k, stride=1)
            change = change - mean
        y = x + change
        return y + self.colour(x) if self.colour is not None else y


class WeightEMA(nn.Module):
    """An exponential moving average of a network's weights (Polyak averaging; for GAN
    generators Yazici et al., "The Unusual Effectiveness of Averaging in GAN Training", 2019):
    a frozen copy of ``net`` that ``update`` moves towards it after each optimizer step,

        ema <- ema + (1 - d) * (net - ema),   d = min(decay, (1 + step) / (10 + step))

    (the warm-up keeps early checkpoints from sitting at the initial weights). Buffers are
    copied as they are. Its ``forward`` is the averaged network's: adversarial training makes
    the generator's weights orbit around a good solution rather than settle on it, and the
    average lies nearer its centre.

    Off in the presets. Measured on the fast preset (benchmarks/quality.py, 3-minute runs,
    about 1200 steps): 0.999 changed the split-tone and sharpening results by -0.2 and +0.2 dB,
    within run-to-run noise; its lr already decays linearly to 0, which averages too. It does
    not stop a slow drift (see benchmarks/quality/EXPERIMENTS-issue14.md)."""

    def __init__(self, net: nn.Module, decay: float):
        super().__init__()
        self.net, self.decay = copy.deepcopy(net), decay
        self.net.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for ema, p in zip(self.net.parameters(), net.parameters()):
            ema.lerp_(p.detach(), 1.0 - d)
        for ema, b in zip(self.net.buffers(), net.buffers()):
            ema.copy_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VoiceGenerator(nn.Module):
    """CycleGAN-VC2's "2-1-2D" generator for spectrograms: ``(N, in_ch, bins, T) -> (N, out_ch,
    bins, T)`` for any T >= 1. Output is linear: normalised log spectrograms are unbounded.

    2-D where the structure is local in time and frequency (formants, harmonics), 1-D along
    time where the conversion happens, with every frequency row in view:

        (5, 15) GLU conv, ngf                           (N, ngf,  F,   T)    no norm
        2 x [5x5 stride-2 GLU conv], 2ngf, 2ngf         (N, 2ngf, F/4, T/4)
        reshape to (N, 2ngf * F/4, T/4), 1x1 conv       (N, 2ngf, T/4)       the 2-D -> 1-D step
        n_blocks x GatedResBlock1d(2ngf, hidden 4ngf)   (N, 2ngf, T/4)       kernel 3 along time
        1x1 conv, reshape back                          (N, 2ngf, F/4, T/4)
        2 x [5x5 conv, x2 up-sampling, x*sigmoid(x)]    (N, ngf,  F,   T)    2ngf, ngf
        (5, 15) conv, out_ch                            (N, out_ch, F, T)   linear

    CycleGAN-VC2 / MaskCycleGAN-VC use ngf 128 (residual width 256, 512 inside a block) and 6
    blocks. The paper calls every activation a GLU; its public implementations (which this
    follows) gate the up-sampling blocks by themselves, x * sigmoid(x), which halves the cost of
    the two most expensive convs (measured with true GLUs there: the whole network 1.6x slower
    on CPU). The 2-D/1-D steps carry no activation, as in the reference.

    Any size: the input is padded (replicate) up to multiples of 4 (two stride-2 steps), and to
    at least 8 frames (instance norm at 1/4 resolution needs two), then cropped back.

    The 1x1 convs of the 2-D -> 1-D step see ``2ngf * ceil(bins / 4)`` channels, so the
    network is built for one bin count: the encoder's, which is fixed for a run (it is part of
    the run's feature settings). That is the reference's design; its known bug is hard-coding
    80 of them, here it is the ``bins`` argument, checked on every call.
    """

    def __init__(self, in_ch: int, out_ch: int, bins: int = 80, ngf: int = 128,
                 n_blocks: int = 6, norm: str = "instance", upsample: str = "shuffle",
                 residual: bool = False):
        super().__init__()
        self.bins = bins
        self.residual = residual and in_ch == out_ch
        width, rows = 2 * ngf, -(-bins // 4)  # channels and frequency rows at 1/4 resolution
        self.encode = nn.Sequential(
            GatedConv(in_ch, ngf, (5, 15), norm="none"),
            GatedConv(ngf, width, 5, stride=2, norm=norm),
            GatedConv(width, width, 5, stride=2, norm=norm),
        )
        self.to_1d = nn.Sequential(nn.Conv1d(width * rows, width, 1, bias=conv_bias(norm)),
                                   norm_layer(norm, dims=1, affine=True)(width))
        self.blocks = nn.Sequential(*[GatedResBlock1d(width, 2 * width, 3, norm)
                                      for _ in range(n_blocks)])
        self.to_2d = nn.Sequential(nn.Conv1d(width, width * rows, 1, bias=conv_bias(norm)),
                                   norm_layer(norm, dims=1, affine=True)(width * rows))
        self.decode = nn.Sequential(
            GatedConv(width, width, 5, norm=norm, upsample=upsample, self_gated=True),
            GatedConv(width, ngf, 5, norm=norm, upsample=upsample, self_gated=True),
            WideConv2d(ngf, out_ch, (5, 15)),  # an nn.Conv2d, faster to train on CPU
        )
        init_weights(self)
        if self.residual:  # start as the identity, see ResnetGenerator
            nn.init.zeros_(self.decode[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, bins, frames = x.shape
        if bins != self.bins:
            raise ValueError(f"the voice generator was built for {self.bins} frequency bins, "
                             f"got {bins}")
        pad_f, pad_t = -bins % 4, max(-frames % 4, 8 - frames)
        if pad_f or pad_t:
            x = F.pad(x, (0, pad_t, 0, pad_f), mode="replicate")
        h = self.encode(x)
        c, rows, t = h.shape[1:]
        h = self.to_2d(self.blocks(self.to_1d(h.reshape(n, c * rows, t))))
        y = self.decode(h.reshape(n, c, rows, t))
        if self.residual:
            y = y + x
        return y[..., :bins, :frames]


class PostFilter(nn.Module):
    """``(N, C, bins, T) -> (N, C, bins, T)``: the input plus a ``FrameCorrection`` of it, a
    small convolutional network along time with every bin in view. It starts as no change;
    ``CycleGAN.finish_training`` fits it (``post_filter_epochs``)."""

    def __init__(self, channels: int, bins: int):
        super().__init__()
        from styletx.audio.decoder import FrameCorrection

        self.shape = (channels, bins)
        self.net = FrameCorrection(channels * bins, channels * bins)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # flatten/unflatten with the fixed (C, bins): no size of T in the graph, so an exported
        # model filters inputs of any length
        return y + self.net(y.flatten(1, 2)).unflatten(1, self.shape)

    def fit(self, outputs: list[torch.Tensor], truths: list[torch.Tensor], epochs: float,
            name: str) -> None:
        """Fitted so that ``self(output)`` matches ``truth`` for each aligned ``(C, bins, T)``
        pair, by L1, ``epochs`` passes over their frames."""
        from styletx.audio.decoder import fit_correction, l1_loss, training_steps

        inputs, targets = (torch.cat([x.flatten(0, 1).float().cpu() for x in xs], dim=1).numpy()
                           for xs in (outputs, truths))
        fitted = fit_correction(inputs, inputs, targets, training_steps(inputs.shape[1], epochs),
                                l1_loss, name)
        self.net.load_state_dict(fitted.state_dict())  # into this module's device

    def reset(self) -> None:
        """No change again."""
        self.net.reset()


def colour_pull_for_files(files: int) -> float:
    """The `fast` preset's colour-loss weight (``lambda_sw``, for each of the two losses) with
    ``files`` files a side: 2.5 up to 24, then growing as the square root of the count, to 5 at
    96 and more. Why: the loss pulls A's colours towards B's, and between a few photos a side
    their colours differ by their subjects as much as by the style; with more photos the
    subjects average out (their share of the difference falls as 1/sqrt(files)), so the pull
    can be firmer. Measured at 600 steps (RESULTS.md, "How hard the colours pull"): 5 against
    2.5 gained +3.0 dB on 2,500 small photos a side, +0.7 on 260 crops of 13 different photos,
    +1.1 and +0.2 on 13 and 15 different photos, and lost 1.9 and 2.9 dB on 8 and 9."""
    return round(2.5 * min(2.0, max(1.0, math.sqrt(files / 24))), 2)


def colour_region_for_files(files: int) -> int:
    """The `fast` preset's ``sw_region`` with ``files`` files a side: the means of 4x4 blocks
    from 96 files (where the colour pull reaches 5), pixels (1) below. Measured at 505-600 steps
    (RESULTS.md, "Colours of regions"): 4 against 1 gained +4.1 and +1.0 dB (two seeds) on
    2,500 small photos a side (a folder of sharpened ones still the identity) and nothing on
    260 crops of 13 photos, but lost 0.3 to 1.0 dB on 8 and 13 different photos, the
    benchmark's 35 tiles and the demo's 48 scenes, where the regions' colours carry more of the
    photos' subjects."""
    return 4 if files >= 96 else 1


class CycleGAN(styletx.Translator):
    name = "cyclegan"
    tileable = True  # convolutions and instance/group norms only
    preview_columns = ("input", "translated", "cycled back")
    Config = CycleGANConfig
    conversion_settings = ("match_k", "match_context", "match_join", "smooth_frames")
    paired = False
    presets = {
        "default": Preset(
            train=dict(size=256, batch_size=1),
            description="the reference CycleGAN: 9-block ResNet generator (ngf 64, transposed-conv "
                        "up-sampling, tanh), 70x70 PatchGAN (ndf 64), LSGAN, cycle 10, identity "
                        "0.5, pool 50, Adam 2e-4 with linear decay over the second half",
        ),
        "tiny": Preset(
            config=dict(ngf=8, ndf=8, n_blocks=1, n_layers_d=2, lr=1e-3),
            train=dict(size=32, batch_size=4, steps=300),
            description="a CPU model for tests and smoke runs, ~35 ms a step on 2 cores at "
                        "32 px, batch 4: the reference architecture at ngf/ndf 8, 1 residual "
                        "block, 34x34 patches, lr 1e-3",
        ),
        "fast": Preset(
            # diffaug: without it the discriminator memorises the few tiles of a small set
            # and wins after ~600 steps, and the colour path drifts after it (sharpening:
            # -3.1 dB against the input; benchmarks/quality/EXPERIMENTS-issue14.md).
            # lambda_sw: the pixel colours' distribution matched directly, which the
            # discriminator alone gave only part of (sepia +3.3 dB -> +9.5 to +10.0).
            # r1: on nine different photos a side (a user's trial), the discriminator still
            # memorised them and the colour paths drifted between steps 710 and 963: held-out
            # photos 25.4 -> 18.2 dB, the untouched input 22.0; R1 0.1 kept them at 25.0, at
            # a cost of 1.3 dB on the sepia benchmark (RESULTS.md, "Different photos").
            # sw_transport: on 2,500 small photos a side the batch's colour loss cancelled out
            # and the model stayed the identity (21.5 dB); with the domain-wide one too, each
            # at half the weight (lambda_sw 2.5), 22.9, and better on nine different photos a
            # side (25.0 -> 25.7), sepia and split tone unchanged. At 5 each: 25.8 on the many
            # files but 22.7 on the nine photos, two of five below the input (RESULTS.md,
            # "Many files"); so the weight grows with the number of files (for_files).
            # sw_region: from 96 files, the colours of 4x4 blocks, not of pixels: 2,500 small
            # photos a side 25.8 -> 29.9 and 28.3 -> 29.3 dB (two seeds), sharpening still the
            # identity (RESULTS.md, "Colours of regions")
            config=dict(generator="local", ngf=16, n_blocks=2, colour_path=32, ndf=16,
                        n_layers_d=2, lambda_cycle=5.0, lambda_identity=0.5, lr=1e-3,
                        diffaug=0.125, lambda_sw=2.5, sw_transport=True, r1=0.1),
            for_files=lambda files: {"lambda_sw": colour_pull_for_files(files),
                                     "sw_region": colour_region_for_files(files)},
            train=dict(size=64, batch_size=4, steps=3000),
            description="quality per CPU minute on photos: the local generator (input + a "
                        "per-pixel colour/tone path + three full-resolution 3x3 convs at 16 "
                        "channels; starts as the identity, no down-sampled body to move whole "
                        "regions), 34x34 PatchGAN (ndf 16) that sees randomly shifted images "
                        "(DiffAugment), with an R1 penalty (0.1) against memorising a small set, "
                        "sliced Wasserstein losses on the pixel colours (each batch's and the "
                        "whole domain's transport, 2.5 each up to 24 files a side, rising to 5 "
                        "at 96 and more, and from 96 on the colours of 4x4-pixel regions), "
                        "cycle 5, identity 0.5, lr 1e-3, 64 px; pair with --minutes",
        ),
    }
    # Spectrograms (1, bins, frames): CycleGAN-VC2's recipe. 64-frame segments, all bins.
    domain_presets = {"audio": {
        "default": Preset(
            config=dict(generator="voice", ngf=64, n_blocks=6, upsample="shuffle", ndf=64,
                        n_layers_d=3, lambda_cycle=10.0, lambda_identity=0.5,
                        identity_steps=10_000, lr=2e-4, lr_d=1e-4),
            train=dict(size=64, batch_size=1, steps=20_000),
            description="CycleGAN-VC2: 2-1-2D voice generator (GLU convs, 6 1-D gated residual "
                        "blocks, pixel-shuffle up-sampling, linear output) at ngf 64 (the paper "
                        "128, halved for CPU conversion speed), 70x70 PatchGAN (ndf 64), LSGAN, "
                        "cycle 10, identity 5 for the first 10k steps, lr 2e-4 / D 1e-4, "
                        "64-frame segments",
        ),
        "fast": Preset(
            config=dict(generator="voice", ngf=32, n_blocks=4, upsample="shuffle", ndf=16,
                        n_layers_d=3, lr=5e-4, lr_d=5e-4, r1=1.0, smooth_frames=3,
                        post_filter_epochs=60, match_k=16),
            train=dict(size=64, batch_size=4, steps=300),
            description="a CPU and minutes: a voice model for `--minutes 10`, chosen with "
                        "benchmarks/voice_real.py (pitch all the way to the target's, part of "
                        "the timbre); 1.2-1.8 s a step at 128 bins x 64 frames, batch 4, on "
                        "one thread of 2 busy cores: the voice generator at ngf 32 with 4 "
                        "blocks, 70x70 PatchGAN at ndf 16 with an R1 penalty (1: without it "
                        "600 steps drifted from the target voice, MCD 3.0 -> 3.6-3.7 dB; with "
                        "it 600 and 1200 hold), identity loss throughout, lr 5e-4 for G and D "
                        "(cleaner than 1e-3 in two seeds), 300 steps; outputs smoothed over 3 "
                        "frames when converting, post-filtered (fitted after training, ~25 s) "
                        "and matched to the target's own frames (k=16, +-4 frames)",
        ),
        "tiny": Preset(
            config=dict(generator="voice", ngf=8, n_blocks=2, upsample="shuffle", ndf=8,
                        n_layers_d=2, identity_steps=150, lr=1e-3, lr_d=5e-4),
            train=dict(size=64, batch_size=4, steps=300),
            description="a CPU voice model for tests and smoke runs, ~0.1 s a step on 2 "
                        "cores at 80 bins x 64 frames (more at the default mel's 128), batch "
                        "4: the voice generator at ngf 8 with 2 blocks, 34x34 PatchGAN at ndf "
                        "8, identity loss for the first half, lr 1e-3 / D 5e-4",
        ),
    }}

    @classmethod
    def config_for_data(cls, config: CycleGANConfig, shapes: dict, crop: tuple) -> CycleGANConfig:
        """The voice generator is built for the spectrograms' bin count: take it from the data."""
        if config.generator != "voice":
            return config
        if crop[0] is not None:  # a domain of free height: not spectrograms
            raise UsageError("cyclegan: generator=voice is for voices (spectrograms of every "
                             "frequency bin), not images; leave it out for images")
        bins = {shape[1] for shape in shapes.values()}
        if len(bins) != 1:
            raise UsageError(f"cyclegan: A and B spectrograms have different bin counts {bins}")
        return dataclasses.replace(config, bins=bins.pop())

    def __init__(self, config: CycleGANConfig, channels_a: int, channels_b: int):
        super().__init__(config, channels_a, channels_b)
        c = config

        def generator(i: int, o: int) -> nn.Module:
            if c.generator == "local":
                return LocalGenerator(i, c.ngf, c.n_blocks, c.colour_path, c.highpass)
            if c.generator == "voice":
                return VoiceGenerator(i, o, c.bins, c.ngf, c.n_blocks, c.norm, c.upsample,
                                      c.residual)
            return ResnetGenerator(i, o, c.ngf, c.n_blocks, c.norm, c.upsample, c.residual,
                                   c.colour_path)

        def discriminator(i: int) -> PatchDiscriminator:
            return PatchDiscriminator(i, c.ndf, c.n_layers_d, c.norm, c.spectral_norm)

        if c.generator == "local" and channels_a != channels_b:
            raise UsageError(f"cyclegan: the local generator changes its input, so A and B need "
                             f"the same channels, not {channels_a} and {channels_b}")
        self.G_A = generator(channels_a, channels_b)
        self.G_B = generator(channels_b, channels_a)
        # Averaged copies that translate in the generators' place (``ema``).
        self.G_A_ema = WeightEMA(self.G_A, c.ema) if c.ema else None
        self.G_B_ema = WeightEMA(self.G_B, c.ema) if c.ema else None
        self.D_A = discriminator(channels_b)  # judges B-domain images: real b vs G_A(a)
        self.D_B = discriminator(channels_a)  # judges A-domain images: real a vs G_B(b)
        # Post-filters of G_A's and G_B's output, fitted after training (``post_filter_epochs``);
        # built on a forked RNG, so that the same seed trains the same generators without them
        with torch.random.fork_rng(devices=[]):
            self.P_A = PostFilter(channels_b, c.bins) if c.post_filter_epochs else None
            self.P_B = PostFilter(channels_a, c.bins) if c.post_filter_epochs else None
        # The target voices' matching sets (``match_k``), filled after training.
        self.M_A = self.M_B = None
        if c.match_k:
            from styletx.audio.matching import FrameMatching

            self.M_A = FrameMatching(channels_b, c.bins, c.match_k, c.match_context,
                                     c.match_join)
            self.M_B = FrameMatching(channels_a, c.bins, c.match_k, c.match_context,
                                     c.match_join)
        self.gan_loss = GANLoss(c.gan_mode)
        self._last_r1: torch.Tensor | None = None  # the R1 penalty of its last step (r1 > 0)
        # An identity loss needs G_A(b) to be comparable with b: only for equal channel counts.
        self.use_identity = c.lambda_identity > 0 and channels_a == channels_b
        self.pool_A = ImagePool(c.pool_size)  # generated A images (G_B(b)), shown to D_B
        self.pool_B = ImagePool(c.pool_size)  # generated B images (G_A(a)), shown to D_A
        # Real images remembered as the sliced Wasserstein loss's reference (``lambda_sw``):
        # more than one batch, so that the target distribution is the domain's, not 4 tiles'.
        self.real_pool_A = ImagePool(c.sw_pool if c.lambda_sw else 0)
        self.real_pool_B = ImagePool(c.sw_pool if c.lambda_sw else 0)
        transport = c.sw_pool if c.lambda_sw and c.sw_transport else 0
        self.fake_pool_A = ImagePool(transport)  # G_B's recent outputs, for sliced_transport
        self.fake_pool_B = ImagePool(transport)

    def networks(self) -> dict[str, nn.Module]:
        nets = {"G_A": self.G_A, "G_B": self.G_B, "D_A": self.D_A, "D_B": self.D_B}
        if self.G_A_ema is not None:
            nets |= {"G_A_ema": self.G_A_ema, "G_B_ema": self.G_B_ema}
        if self.P_A is not None:
            nets |= {"P_A": self.P_A, "P_B": self.P_B}
        if self.M_A is not None:
            nets |= {"M_A": self.M_A, "M_B": self.M_B}
        return nets

    def generator_networks(self) -> dict[str, nn.Module]:
        """The generators (and their averages): the post-filters are no part of a training
        step, so ``--compile`` leaves them alone."""
        return {name: net for name, net in self.networks().items() if name.startswith("G")}

    def _post_filter(self, direction: str) -> PostFilter | None:
        return self.P_A if direction == "a2b" else self.P_B

    def _frame_matching(self, direction: str) -> FrameMatching | None:
        return self.M_A if direction == "a2b" else self.M_B

    def _after_generator(self, direction: str) -> list[nn.Module]:
        """What the voice generator's output goes through when converting, in order."""
        steps = [TimeSmoothing(self.config.smooth_frames)] if self.config.smooth_frames > 1 else []
        return steps + [m for m in (self._post_filter(direction), self._frame_matching(direction))
                        if m is not None]

    def _translator_net(self, direction: str) -> nn.Module:
        """The network that converts ``direction``: the averaged generator when there is one."""
        if self.G_A_ema is not None:
            return self.G_A_ema if direction == "a2b" else self.G_B_ema
        return self.G_A if direction == "a2b" else self.G_B

    @property
    def size_multiple(self) -> int:
        # Two stride-2 down-samplings; the voice generator pads itself (and must see exactly
        # its bins, which padding by the caller would change).
        return 4 if self.config.generator == "resnet" else 1

    def _check_training_shape(self, x: torch.Tensor) -> None:
        """Clear errors for crops the networks cannot take, before they fail deep inside."""
        c = self.config
        h, w = x.shape[-2:]
        if c.generator == "voice" and h != c.bins:
            raise UsageError(f"cyclegan: the voice generator is built for {c.bins} frequency "
                             f"bins but the spectrograms have {h}; train with --set bins={h}")
        if c.lambda_sw and min(h, w) < c.sw_region:
            raise UsageError(f"cyclegan: {h}x{w} training crops are smaller than the colour "
                             f"loss's {c.sw_region}x{c.sw_region} regions (sw_region); use a "
                             f"larger --size or a smaller sw_region")
        # PatchGAN: k4 convs, n_layers_d of them stride 2, then two stride-1 ones
        least = 3 * 2**c.n_layers_d
        if min(h, w) < least:
            raise UsageError(f"cyclegan: {h}x{w} training crops are too small for the "
                             f"discriminator (n_layers_d {c.n_layers_d} needs at least "
                             f"{least}x{least}); use a larger --size or a smaller n_layers_d")

    # -- training -------------------------------------------------------------------------
    def configure_optimizers(self, total_steps: int) -> None:
        c = self.config
        betas = (c.beta1, c.beta2)
        # One optimizer for both generators and one for both discriminators, as the reference.
        generators = [*self.G_A.parameters(), *self.G_B.parameters()]
        colour = [p for g in (self.G_A, self.G_B) if getattr(g, "colour", None) is not None
                  for p in g.colour.parameters()]
        if c.lr_colour is not None and colour:  # a second group (one otherwise: older runs)
            ids = {id(p) for p in colour}
            generators = [{"params": [p for p in generators if id(p) not in ids]},
                          {"params": colour, "lr": c.lr_colour}]
        self.optimizers = {
            "G": adam(generators, c.lr, betas),
            "D": adam([*self.D_A.parameters(), *self.D_B.parameters()],
                      c.lr if c.lr_d is None else c.lr_d, betas),
        }
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(total_steps, c.decay_start))
            for name, opt in self.optimizers.items()
        }

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.config
        real_a = batch["a"].to(self.device, non_blocking=True)
        real_b = batch["b"].to(self.device, non_blocking=True)
        self._check_training_shape(real_a)
        self._check_training_shape(real_b)
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        identity = self.use_identity and (c.identity_steps == 0 or step < c.identity_steps)

        # Generators. The discriminators are frozen so that no gradient is computed for them.
        set_requires_grad([self.D_A, self.D_B], False)
        opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            fake_b, fake_a, rec_a, rec_b, same_b, same_a = self.forward_for(
                "G", self._generate, real_a, real_b, identity)
            loss_g_a = self.gan_loss(self.D_A(self._augment(fake_b)), True)
            loss_g_b = self.gan_loss(self.D_B(self._augment(fake_a)), True)
            cycle_a = F.l1_loss(rec_a.float(), real_a) * c.lambda_cycle
            cycle_b = F.l1_loss(rec_b.float(), real_b) * c.lambda_cycle
            loss_g = loss_g_a + loss_g_b + cycle_a + cycle_b
            if c.lambda_sw:
                sw_a, sw_b = self._distribution_losses(fake_b, fake_a, real_a, real_b)
                loss_g = loss_g + sw_a + sw_b
            if identity:
                weight = c.lambda_cycle * c.lambda_identity
                idt_a = F.l1_loss(same_b.float(), real_b) * weight  # G_A should leave b alone
                idt_b = F.l1_loss(same_a.float(), real_a) * weight  # and G_B a
                loss_g = loss_g + idt_a + idt_b
            else:
                idt_a = idt_b = torch.zeros(())
        loss_g.backward()
        opt_g.step()
        if self.G_A_ema is not None:
            self.G_A_ema.update(self.G_A, step)
            self.G_B_ema.update(self.G_B, step)

        # Discriminators, on real images and on fakes from the history pools.
        set_requires_grad([self.D_A, self.D_B], True)
        opt_d.zero_grad(set_to_none=True)
        pooled_b = self._augment(self.pool_B.query(fake_b.detach()))
        pooled_a = self._augment(self.pool_A.query(fake_a.detach()))
        seen_b, seen_a = self._augment(real_b), self._augment(real_a)
        with self.autocast():
            (real_da, fake_da), (real_db, fake_db) = self.forward_for(
                "D", lambda: (self._run(self.D_A, seen_b, pooled_b),
                              self._run(self.D_B, seen_a, pooled_a)))
            loss_d_a = self.gan_loss.discriminator(real_da, fake_da)
            loss_d_b = self.gan_loss.discriminator(real_db, fake_db)
        loss_d = loss_d_a + loss_d_b
        if c.r1 and step % c.r1_every == 0:  # lazy: every r1_every steps, r1_every times as much
            r1 = r1_penalty(self.D_A, seen_b) + r1_penalty(self.D_B, seen_a)
            loss_d = loss_d + r1 * (0.5 * c.r1 * c.r1_every)
            self._last_r1 = r1.detach()  # logged until the next: a log step may fall between
        loss_d.backward()
        opt_d.step()

        losses = {"G_A": loss_g_a, "G_B": loss_g_b, "cycle_A": cycle_a, "cycle_B": cycle_b,
                  "idt_A": idt_a, "idt_B": idt_b, "D_A": loss_d_a, "D_B": loss_d_b}
        if c.r1 and self._last_r1 is not None:
            losses["R1"] = self._last_r1
        if c.lambda_sw:
            losses |= {"SW_A": sw_a, "SW_B": sw_b}
        values = torch.stack([v.detach().float().to(self.device) for v in losses.values()])
        return dict(zip(losses, values.tolist()))  # one device sync, not eight

    def _distribution_losses(self, fake_b: torch.Tensor, fake_a: torch.Tensor,
                             real_a: torch.Tensor, real_b: torch.Tensor) -> tuple:
        """``lambda_sw`` times the sliced Wasserstein distance of G_A's outputs to the
        remembered real B images, and of G_B's to the real A images; with ``sw_transport``,
        plus as much of the domain-wide transport loss."""
        c = self.config
        self.real_pool_A.query(real_a)  # stores them
        self.real_pool_B.query(real_b)
        reference_a = self._regions(torch.stack(self.real_pool_A.images))
        reference_b = self._regions(torch.stack(self.real_pool_B.images))
        fake_b, fake_a = self._regions(fake_b), self._regions(fake_a)
        sw_a = sliced_wasserstein(fake_b, reference_b, c.sw_patch) * c.lambda_sw
        sw_b = sliced_wasserstein(fake_a, reference_a, c.sw_patch) * c.lambda_sw
        if c.sw_transport:
            self.fake_pool_A.query(fake_a)
            self.fake_pool_B.query(fake_b)
            sw_a = sw_a + sliced_transport(fake_b, torch.stack(self.fake_pool_B.images),
                                           reference_b, c.sw_patch) * c.lambda_sw
            sw_b = sw_b + sliced_transport(fake_a, torch.stack(self.fake_pool_A.images),
                                           reference_a, c.sw_patch) * c.lambda_sw
        return sw_a, sw_b

    def _regions(self, images: torch.Tensor) -> torch.Tensor:
        """What the colour losses compare of ``images``: with ``sw_region`` k > 1, the means of
        their k x k blocks (a partial block at an edge is left out)."""
        k = self.config.sw_region
        return F.avg_pool2d(images, k) if k > 1 else images

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """What the discriminators see of ``x``: with ``diffaug`` / ``cutout``, a random shift and
        cutout per example (a fresh draw each call); otherwise ``x`` itself."""
        c = self.config
        if not (c.diffaug or c.cutout):
            return x
        return diff_augment(x, translation=c.diffaug, cutout=c.cutout)[0]

    def _generate(self, real_a: torch.Tensor, real_b: torch.Tensor, identity: bool) -> tuple:
        """The generators' forward pass: fake_b, fake_a, rec_a, rec_b, and each generator
        applied to its own output domain, same_b = G_A(b) and same_a = G_B(a) (None without
        the identity loss)."""
        same_b = same_a = None
        if identity:
            fake_b, same_b = self._run(self.G_A, real_a, real_b)
            fake_a, same_a, rec_a = self._run(self.G_B, real_b, real_a, fake_b)
        else:
            (fake_b,) = self._run(self.G_A, real_a)
            fake_a, rec_a = self._run(self.G_B, real_b, fake_b)
        return fake_b, fake_a, rec_a, self.G_A(fake_a), same_b, same_a

    def _run(self, net: nn.Module, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """``[net(x) for x in inputs]``, as one batched call when that gives the same result:
        instance norm is per example, but batch norm statistics would mix the inputs (the
        reference runs them separately). On CPU one call of 3N examples is ~25% cheaper than
        three."""
        if self.config.norm == "batch" or len({x.shape[1:] for x in inputs}) > 1:
            return [net(x) for x in inputs]
        return list(net(torch.cat(inputs)).split([len(x) for x in inputs]))

    def _pools(self) -> list[tuple[str, ImagePool]]:
        pools = [("pool_A", self.pool_A), ("pool_B", self.pool_B)]
        if self.config.lambda_sw:
            pools += [("real_pool_A", self.real_pool_A), ("real_pool_B", self.real_pool_B)]
        if self.config.lambda_sw and self.config.sw_transport:
            pools += [("fake_pool_A", self.fake_pool_A), ("fake_pool_B", self.fake_pool_B)]
        return pools

    def extra_state(self) -> dict[str, torch.Tensor]:
        state = {}
        for name, pool in self._pools():
            state.update({f"{name}.{k}": v for k, v in pool.state_dict().items()})
        return state

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, pool in self._pools():
            prefix = f"{name}."
            pool.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                  if k.startswith(prefix)})

    # -- inference ------------------------------------------------------------------------
    def translate(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """``(N, C_src, H, W) -> (N, C_dst, H, W)`` float32 on x's device. ResNet generator: H,
        W divisible by 4 and at least 8; local generator: at least 2; voice generator: H =
        bins, any W (it pads itself).

        Runs in the networks' current mode (instance norm acts the same in both)."""
        src, _ = direction_sides(direction)
        if x.ndim != 4 or x.shape[1] != self.channels[src]:
            raise ValueError(f"{direction} expects (N, {self.channels[src]}, H, W), "
                             f"got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.config.generator == "voice":
            if h != self.config.bins:
                raise ValueError(f"the voice generator is built for {self.config.bins} "
                                 f"frequency bins, got {h}")
        elif self.config.generator == "resnet" and (h % 4 or w % 4 or min(h, w) < 8):
            # >= 8: the reflection padding at 1/4 resolution needs 2 pixels to reflect
            raise ValueError(f"height and width must be multiples of 4 and at least 8, got "
                             f"{h}x{w} (pad the input)")
        elif min(h, w) < 2:  # the local generator's reflection padding: 2 pixels to reflect
            raise ValueError(f"height and width must be at least 2, got {h}x{w} (pad the input)")
        net = self._translator_net(direction)
        with torch.no_grad(), self.autocast():
            y = net(x.to(self.device, torch.float32))
            if self.config.generator == "voice":  # converting: training steps never call this
                y = y.float()
                for step in self._after_generator(direction):
                    y = step(y)
        return y.float().to(x.device)

    def export_module(self, direction: str) -> nn.Module:
        """The generator of ``direction``. The ResNet generator as it is (the exporter pads to
        ``size_multiple``); the voice generator with the frames padded before it as its forward
        pads them (replicate, to a multiple of 4 and at least 8), but without a branch on the
        size, so that the padding inside its forward never happens."""
        direction_sides(direction)  # checks it
        net = self._translator_net(direction)
        if self.config.generator == "voice":  # smoothed, filtered and matched as translate does
            steps = [styletx.PadCrop(net, multiple=(1, 4), least=(0, 8), mode="replicate")]
            steps += self._after_generator(direction)
            return steps[0] if len(steps) == 1 else nn.Sequential(*steps)
        return net

    def finish_training(self, examples: dict[str, list[torch.Tensor]]) -> None:
        """With ``post_filter_epochs``: each direction's post-filter fitted on the cycle's
        reconstructions of its output side's training examples (for G_A's: b through
        ``translate`` to A and back, so each generator's output smoothed as when converting,
        against b), on seeded pieces of them (``_post_filter_pieces``). With ``match_k``: each
        direction's matching set filled with its output side's training examples. Left in
        evaluation mode."""
        fitted = [m for d in DIRECTIONS for m in (self._post_filter(d), self._frame_matching(d))
                  if m is not None]
        if not fitted:
            return
        self.train(False)
        for module in fitted:  # the reconstructions are the bare generators'
            module.reset()
        try:
            if self.P_A is not None:
                self._fit_post_filters(examples)
        finally:  # the sets after the filters (which fit on unmatched output), even if they fail
            for direction in DIRECTIONS if self.M_A is not None else ():
                self._frame_matching(direction).fit(examples[direction_sides(direction)[1]])

    def _fit_post_filters(self, examples: dict[str, list[torch.Tensor]]) -> None:
        pairs = {}
        for direction in DIRECTIONS:
            source, target = direction_sides(direction)
            truths = _post_filter_pieces(examples[target])
            back = f"{target}2{source}"
            pairs[direction] = ([self.translate(self.translate(x[None], back), direction)[0]
                                 for x in truths], truths)
        for direction, (outputs, truths) in pairs.items():
            self._post_filter(direction).fit(outputs, truths, self.config.post_filter_epochs,
                                             f"post-filter {direction}")


def _post_filter_pieces(examples: list[torch.Tensor]) -> list[torch.Tensor]:
    """Up to ``POST_FILTER_FRAMES`` frames of ``examples`` in seeded pieces of at most
    ``POST_FILTER_CROP`` frames: every example while they fit (two minutes of voice: all of
    it), else a seeded choice. The same examples give the same pieces."""
    rng = np.random.default_rng(0)
    fits = sum(min(x.shape[-1], POST_FILTER_CROP) for x in examples) <= POST_FILTER_FRAMES
    pieces, total = [], 0
    for i in range(len(examples)) if fits else rng.permutation(len(examples)):
        x = examples[int(i)]
        frames = min(x.shape[-1], POST_FILTER_CROP, POST_FILTER_FRAMES - total)
        if frames < 1:
            break
        start = int(rng.integers(0, x.shape[-1] - frames + 1))
        pieces.append(x[..., start:start + frames])
        total += frames
    return pieces


@styletx.hookimpl
def register_translators(register):
    register(CycleGAN)
