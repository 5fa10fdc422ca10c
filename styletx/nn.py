"""Network building blocks shared by the model families (CycleGAN, pix2pix, UNIT).

Shapes are ``(N, C, H, W)`` (``(N, C, T)`` for the 1-D blocks). Defaults follow the reference
implementations (pytorch-CycleGAN-and-pix2pix): instance norm without affine parameters,
reflection padding, weights drawn from N(0, 0.02), LeakyReLU 0.2 in the PatchGAN, least-squares
GAN loss and a history pool of 50 generated images for the discriminators. The gated blocks
(``GatedConv``, ``GatedResBlock1d``) follow CycleGAN-VC2 instead: gated linear units after an
affine instance norm.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["init_weights", "norm_layer", "conv_bias", "ResnetBlock", "Upsample", "ColourPath",
           "WideConv2d", "GatedConv", "GatedResBlock1d", "PatchDiscriminator", "GANLoss",
           "ImagePool", "diff_augment", "r1_penalty", "set_requires_grad", "adam", "smooth_time",
           "TimeSmoothing",
           "linear_decay", "NORMS", "PADDINGS", "UPSAMPLES", "GAN_MODES"]

NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "replicate", "zeros")
UPSAMPLES = ("transpose", "resize", "shuffle")
GAN_MODES = ("lsgan", "vanilla")


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """Reference "normal" init: conv/linear weights ~ N(0, gain), norm weights ~ N(1, gain),
    biases 0. Spectral-normalised layers get their underlying (original) weight initialised."""
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if parametrize.is_parametrized(m, "weight"):
                weight = m.parametrizations.weight.original
            else:
                weight = m.weight
            nn.init.normal_(weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                            nn.GroupNorm)):
            if m.weight is not None:  # instance norm is affine=False by default: no weight
                nn.init.normal_(m.weight, 1.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def norm_layer(kind: str, dims: int = 2, affine: bool | None = None) -> Callable[[int], nn.Module]:
    """Factory ``channels -> normalisation module`` for "instance", "batch" or "none", for
    ``(N, C, H, W)`` (dims=2) or ``(N, C, T)`` (dims=1) tensors.

    Instance norm is affine=False unless asked (the reference) and keeps no running statistics,
    so it acts the same in train and eval mode; batch norm is affine with running statistics.
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, not {dims}")
    if kind == "instance":
        cls = nn.InstanceNorm1d if dims == 1 else nn.InstanceNorm2d
        return functools.partial(cls, affine=bool(affine), track_running_stats=False)
    if kind == "batch":
        cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        return functools.partial(cls, affine=affine is not False, track_running_stats=True)
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (choose from {', '.join(NORMS)})")


def conv_bias(norm: str) -> bool:
    """Convs followed by batch norm need no bias (its affine shift does the job)."""
    return norm != "batch"


def _padding_mode(padding: str) -> str:
    if padding == "zero":
        padding = "zeros"
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r} (choose from {', '.join(PADDINGS)})")
    return padding


class ResnetBlock(nn.Module):
    """``x + conv-norm-relu-[dropout]-conv-norm(x)``, 3x3 convs; ``(N, dim, H, W)`` in and out."""

    def __init__(self, dim: int, norm: str = "instance", padding: str = "reflect",
                 dropout: float = 0.0):
        super().__init__()
        make_norm, bias, mode = norm_layer(norm), conv_bias(norm), _padding_mode(padding)
        layers: list[nn.Module] = [
            nn.Conv2d(dim, dim, 3, padding=1, padding_mode=mode, bias=bias),
            make_norm(dim),
            nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Conv2d(dim, dim, 3, padding=1, padding_mode=mode, bias=bias), make_norm(dim)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Upsample(nn.Sequential):
    """x2 up-sampling, then norm and ReLU: ``(N, in_ch, H, W) -> (N, out_ch, 2H, 2W)``.

    "transpose": ConvTranspose2d(k3, s2, p1, output_padding 1), the reference. Its uneven kernel
    overlap is the usual source of checkerboard artifacts. "resize": nearest-neighbour x2
    followed by a reflect-padded 3x3 conv, the usual remedy (Odena et al., 2016). "shuffle": a
    3x3 conv to 4 x out_ch channels rearranged into a x2 grid (PixelShuffle, Shi et al., 2016;
    CycleGAN-VC2's choice), the same cost as "resize" at a quarter of the resolution.
    """

    def __init__(self, in_ch: int, out_ch: int, mode: str = "transpose", norm: str = "instance"):
        bias = conv_bias(norm)
        if mode == "transpose":
            up: list[nn.Module] = [
                nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1,
                                   bias=bias)
            ]
        elif mode == "resize":
            up = [nn.Upsample(scale_factor=2, mode="nearest"),
                  nn.Conv2d(in_ch, out_ch, 3, padding=1, padding_mode="reflect", bias=bias)]
        elif mode == "shuffle":
            up = [nn.Conv2d(in_ch, out_ch * 4, 3, padding=1, padding_mode="reflect", bias=bias),
                  nn.PixelShuffle(2)]
        else:
            raise ValueError(f"unknown upsample {mode!r} (choose from {', '.join(UPSAMPLES)})")
        super().__init__(*up, norm_layer(norm)(out_ch), nn.ReLU(True))


class ColourPath(nn.Module):
    """A per-pixel colour and tone change, ``(N, C, H, W) -> (N, C, H, W)``: a small MLP on each
    pixel's values alone (1x1 convs, ``width`` hidden channels), so it can learn any global
    grade (a sepia matrix, tone curves, a split-tone that depends on brightness) in a few
    hundred steps, where a spatial network needs thousands. It is meant to sit beside a
    spatial path, both adding a change to the input; its last layer starts at zero, so at
    step 0 it changes nothing (default PyTorch init elsewhere, not N(0, 0.02), which would
    make its hidden units nearly constant)."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, width, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, channels, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class WideConv2d(nn.Conv2d):
    """``nn.Conv2d`` (stride 1, "same" zero padding, odd kernel) for a wide kernel on few
    channels, such as CycleGAN-VC2's (5, 15) first and last layers: the same parameters and
    results, computed faster when training on CPU.

    oneDNN's CPU backward is slow for these shapes (one input or one output channel, 75 taps:
    a few GFLOP/s). Equivalent arrangements are 1.5-2.3x cheaper there: a layer that narrows
    (in > out channels) runs as the transposed conv of the flipped kernel; one that widens runs
    on the input with its two spatial axes swapped. Measured (torch 2.13, 2 threads,
    the tiny voice preset at 80 x 64, batch 4): 166 -> 118 ms a training step with the identity
    loss, 122 -> 91 ms without. Inference and other devices use the plain conv, which is as
    fast there.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: tuple[int, int], bias: bool = True):
        if any(k % 2 == 0 for k in kernel_size):
            raise ValueError(f"WideConv2d needs odd kernel sizes, got {kernel_size}")
        super().__init__(in_ch, out_ch, kernel_size, padding=tuple(k // 2 for k in kernel_size),
                         bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not torch.is_grad_enabled():
            return super().forward(x)
        if self.in_channels > self.out_channels:
            kernel = self.weight.flip(-2, -1).transpose(0, 1)
            return F.conv_transpose2d(x, kernel, self.bias, padding=self.padding)
        ph, pw = self.padding
        return F.conv2d(x.transpose(-1, -2), self.weight.transpose(-1, -2), self.bias,
                        padding=(pw, ph)).transpose(-1, -2)


class GatedConv(nn.Module):
    """Gated linear unit conv block, as in CycleGAN-VC/VC2: conv, norm, GLU.

    ``(N, in_ch, H, W) -> (N, out_ch, H', W')`` (``dims=2``) or ``(N, in_ch, T) -> (N, out_ch,
    T')`` (``dims=1``). The conv makes 2 x out_ch channels; after the norm, the first half is
    multiplied by the sigmoid of the second (``F.glu``, Dauphin et al., 2017), so each output
    learns how much of its value to let through. This is the reference's separate value and
    gate convs fused into one call (instance norm is per channel, so norming both halves
    together changes nothing). Instance norm is affine here, as in CycleGAN-VC2: without a
    learned shift every gate would sit at sigmoid(0) on average. ``self_gated`` instead gates
    each channel by itself, ``x * sigmoid(x)`` (SiLU), from a conv of out_ch channels: what the
    public CycleGAN-VC2 / MaskCycleGAN-VC code does in its up-sampling blocks, at half the cost.

    Convs are "same"-padded with zeros (padding ``k // 2``, odd kernels): stride 1 keeps the
    size, stride 2 gives ``ceil(size / 2)``. ``upsample`` first doubles every spatial size:
    "shuffle" (the conv makes 4x the channels at the input's resolution, then PixelShuffle;
    CycleGAN-VC2, 2-D only), "resize" (nearest x2, then the conv) or "transpose" (a stride-2
    transposed conv).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, ...] = 3,
                 stride: int = 1, dims: int = 2, norm: str = "instance",
                 upsample: str | None = None, self_gated: bool = False):
        super().__init__()
        conv_cls = nn.Conv1d if dims == 1 else nn.Conv2d
        ks = (kernel_size,) * dims if isinstance(kernel_size, int) else tuple(kernel_size)
        padding = tuple(k // 2 for k in ks)
        self.self_gated = self_gated
        bias, width = conv_bias(norm), out_ch if self_gated else 2 * out_ch
        layers: list[nn.Module] = []
        if upsample is None and dims == 2 and stride == 1 and max(ks) > 5:
            layers.append(WideConv2d(in_ch, width, ks, bias=bias))  # e.g. CycleGAN-VC2's (5, 15)
        elif upsample is None:
            layers.append(conv_cls(in_ch, width, ks, stride=stride, padding=padding, bias=bias))
        elif stride != 1:
            raise ValueError("an up-sampling GatedConv has stride 1")
        elif upsample == "shuffle":
            if dims != 2:
                raise ValueError("upsample 'shuffle' is 2-D only")
            layers += [conv_cls(in_ch, width * 4, ks, padding=padding, bias=bias),
                       nn.PixelShuffle(2)]
        elif upsample == "resize":
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       conv_cls(in_ch, width, ks, padding=padding, bias=bias)]
        elif upsample == "transpose":
            transpose = nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d
            layers.append(transpose(in_ch, width, ks, stride=2, padding=padding,
                                    output_padding=1, bias=bias))
        else:
            raise ValueError(f"unknown upsample {upsample!r} (choose from {', '.join(UPSAMPLES)})")
        layers.append(norm_layer(norm, dims, affine=True)(width))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(x)
        return F.silu(h) if self.self_gated else F.glu(h, dim=1)


class GatedResBlock1d(nn.Module):
    """CycleGAN-VC2's 1-D residual block: ``x + norm(conv(GLU-conv(x)))``, ``(N, dim, T)`` in
    and out; kernel 3 along time, ``hidden`` channels inside (the reference: 2 x dim)."""

    def __init__(self, dim: int, hidden: int | None = None, kernel_size: int = 3,
                 norm: str = "instance"):
        super().__init__()
        hidden = hidden or 2 * dim
        self.block = nn.Sequential(
            GatedConv(dim, hidden, kernel_size, dims=1, norm=norm),
            nn.Conv1d(hidden, dim, kernel_size, padding=kernel_size // 2, bias=conv_bias(norm)),
            norm_layer(norm, dims=1, affine=True)(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class PatchDiscriminator(nn.Module):
    """The reference PatchGAN: ``(N, in_ch, H, W) -> (N, 1, h, w)`` real/fake logits per patch.

    k4 convs with LeakyReLU 0.2; the first layer has no norm; ``n_layers`` stride-2 layers
    (channels ndf, 2ndf, 4ndf, ... capped at 8ndf), one stride-1 layer, then a 1-channel
    stride-1 output. With n_layers=3 each output sees a 70x70 patch (34x34 for 2, 16x16 for 1);
    a 256x256 input gives a 30x30 map. ``spectral_norm`` wraps every conv (Miyato et al., 2018).
    """

    def __init__(self, in_ch: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance",
                 spectral_norm: bool = False):
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last of these keeps the resolution
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                       make_norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_weights(self)
        if spectral_norm:
            for m in self.model:
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GANLoss(nn.Module):
    """``loss(prediction, target_is_real)``: "lsgan" = MSE against 1/0 (the CycleGAN reference),
    "vanilla" = binary cross-entropy on logits (pix2pix). Computed in float32."""

    def __init__(self, mode: str = "lsgan"):
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown gan_mode {mode!r} (choose from {', '.join(GAN_MODES)})")
        self.mode = mode

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        prediction = prediction.float()
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        if self.mode == "lsgan":
            return F.mse_loss(prediction, target)
        return F.binary_cross_entropy_with_logits(prediction, target)

    def discriminator(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """A discriminator's loss on its scores for real and for (detached) generated
        examples: the mean of the two, as the reference halves it so that D learns at half
        the generators' rate."""
        return 0.5 * (self(real, True) + self(fake, False))


class ImagePool:
    """History of generated images for the discriminator (Shrivastava et al., 2017).

    ``query(images)`` returns a batch of the same shape: while the pool fills, the new images
    themselves (and they are stored); once full, each image is with probability 0.5 swapped
    for a random stored one (which it replaces), else passed through. ``size=0`` disables it.
    Randomness comes from torch's global RNG, so checkpointing ``torch.get_rng_state()``
    together with ``state_dict()`` makes a resumed run draw the same images.
    """

    def __init__(self, size: int = 50):
        self.size = size
        self.images: list[torch.Tensor] = []  # each (C, H, W), detached

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        images = images.detach()
        stored = self.images[0] if self.images else images
        if (stored.device, stored.dtype) != (images.device, images.dtype):  # e.g. resumed
            self.images = [image.to(images) for image in self.images]
        swap = (torch.rand(len(images)) > 0.5).tolist()
        slot = torch.randint(self.size, (len(images),)).tolist()
        out = []
        for image, do_swap, i in zip(images, swap, slot):
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif do_swap:
                out.append(self.images[i])
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"images": (n, C, H, W)}`` with n <= size (an empty tensor when nothing is stored)."""
        return {"images": torch.stack(self.images) if self.images else torch.empty(0)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        images = state["images"]
        if len(images) > self.size:
            raise ValueError(f"pool state holds {len(images)} images, more than size {self.size}")
        self.images = [image.clone() for image in images]


def diff_augment(*images: torch.Tensor, translation: float = 0.125,
                 cutout: float = 0.0) -> list[torch.Tensor]:
    """Differentiable augmentation of a discriminator's inputs (DiffAugment: Zhao et al.,
    "Differentiable Augmentation for Data-Efficient GAN Training", 2020), for a discriminator
    that memorises a small training set. Each ``(N, C, H, W)`` image is shifted by a random
    whole number of pixels, up to ``translation`` of its height and width each way (zero
    padding), then has a random square of side ``cutout`` of its size set to zero (centre
    anywhere in the image; 0 = none). No colour changes: they would hide the very thing a
    colour task's discriminator must judge.

    Every tensor passed in one call gets the same transform per example (they need the same N,
    H and W), e.g. a conditional discriminator's input and output; apply it to real and
    generated batches in separate calls, before the discriminator, in the generators' step and
    in its own alike. Gradients flow through to the images. Randomness from torch's global RNG
    (drawn on the CPU)."""
    n, _, h, w = images[0].shape
    if any(x.shape[0] != n or x.shape[-2:] != (h, w) for x in images):
        raise ValueError(f"diff_augment: images of different sizes "
                         f"{[tuple(x.shape) for x in images]}")
    device = images[0].device
    out = list(images)
    if translation > 0:
        sy, sx = round(h * translation), round(w * translation)
        ty = torch.randint(-sy, sy + 1, (n, 1, 1)).to(device)
        tx = torch.randint(-sx, sx + 1, (n, 1, 1)).to(device)
        rows = torch.arange(h, device=device).view(1, h, 1) - ty  # output pixel <- input pixel
        cols = torch.arange(w, device=device).view(1, 1, w) - tx
        inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)  # (n,1,h,w)
        index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w)
        out = [x.flatten(2).gather(2, index.expand(-1, x.shape[1], -1)).view_as(x) * inside
               for x in out]
    if cutout > 0:
        ch, cw = max(1, round(h * cutout)), max(1, round(w * cutout))
        cy = torch.randint(0, h, (n, 1, 1)).to(device)  # the square's centre
        cx = torch.randint(0, w, (n, 1, 1)).to(device)
        rows = torch.arange(h, device=device).view(1, h, 1) - cy + ch // 2
        cols = torch.arange(w, device=device).view(1, 1, w) - cx + cw // 2
        keep = ~((rows >= 0) & (rows < ch) & (cols >= 0) & (cols < cw)).unsqueeze(1)
        out = [x * keep for x in out]
    return out


def sliced_wasserstein(fake: torch.Tensor, real: torch.Tensor, patch: int = 1,
                       projections: int = 32) -> torch.Tensor:
    """A distribution distance between two sets of images that needs no discriminator: the
    sliced Wasserstein-1 distance (Rabin et al., 2011; for textures Heitz et al., "A Sliced
    Wasserstein Loss for Neural Texture Synthesis", 2021) between their ``patch`` x ``patch``
    pixel neighbourhoods (1 = the pixels' colours alone; 0 = whole columns, e.g. a
    spectrogram's frames, each with all its frequency bins). Each of ``projections`` random unit
    directions in patch space (fresh each call, drawn on the CPU from torch's global RNG) maps
    every patch to one number; the two sorted sets of numbers are compared in order (the 1-D
    optimal transport), |difference| averaged, which is in the images' own units like an L1
    loss. ``real`` may hold more images than ``fake``: a random subset of its patches, as many
    as ``fake`` has, is compared. Gradients reach ``fake``. Computed in float32 also under
    autocast: sorting half-precision values would round away the differences it measures."""
    with torch.autocast(fake.device.type, enabled=False):
        return _sliced_wasserstein(fake.float(), real.detach().float(), patch, projections)


def _sliced_wasserstein(fake: torch.Tensor, real: torch.Tensor, patch: int,
                        projections: int) -> torch.Tensor:
    directions = _directions(fake.shape[1], patch, projections, fake.shape[2]).to(fake.device)
    fake_values = F.conv2d(fake, directions).transpose(0, 1).flatten(1)
    real_values = F.conv2d(real, directions).transpose(0, 1).flatten(1)
    count = fake_values.shape[1]
    if real_values.shape[1] > count:
        keep = torch.randperm(real_values.shape[1])[:count].to(fake.device)
        real_values = real_values[:, keep]
    elif real_values.shape[1] < count:
        raise ValueError(f"sliced_wasserstein: real holds fewer patches ({real_values.shape[1]}) "
                         f"than fake ({count})")
    return (fake_values.sort(dim=1).values - real_values.sort(dim=1).values).abs().mean()


def sliced_transport(fake: torch.Tensor, fake_reference: torch.Tensor,
                      real_reference: torch.Tensor, patch: int = 1, projections: int = 32,
                      samples: int = 4096) -> torch.Tensor:
    """The sliced Wasserstein loss with each of ``fake``'s patches moved towards where the
    optimal transport of the whole *domain* sends it, not of its own batch: along each random
    direction, a patch's rank among the projections of ``fake_reference`` (recent generated
    images, detached, this batch among them) gives its quantile, and the target is the same
    quantile of ``real_reference``. ``sliced_wasserstein`` matches a batch of four to the
    domain, so a batch of four dark photos is pushed brighter and one of sky darker, whatever
    the map between the domains is; on thousands of different photos a side those pushes
    cancel and a generator learnt no grade at all (22.10 -> 22.15 dB, the best global colour
    map 32.0). Here the targets follow the domains' own distributions, so the gradient is the
    one of the distance between the domains. At most ``samples`` patches of each reference
    are used. Float32, like ``sliced_wasserstein``."""
    with torch.autocast(fake.device.type, enabled=False):
        fake = fake.float()
        directions = _directions(fake.shape[1], patch, projections, fake.shape[2]).to(fake.device)
        fake_values = F.conv2d(fake, directions).transpose(0, 1).flatten(1)
        pooled = _projected_sample(fake_reference.detach().float(), directions, samples)
        real = _projected_sample(real_reference.detach().float(), directions, samples)
        rank = torch.searchsorted(pooled, fake_values.detach().contiguous())
        quantile = rank.float() / pooled.shape[1]
        index = (quantile * (real.shape[1] - 1)).round().long()
        return (fake_values - real.gather(1, index)).abs().mean()


def _directions(channels: int, patch: int, projections: int, height: int = 0) -> torch.Tensor:
    """``projections`` random unit directions in patch space, as conv2d weights (drawn on the
    CPU from torch's global RNG, so a resumed run draws the same)."""
    height, width = (height, 1) if patch == 0 else (patch, patch)
    directions = torch.randn(projections, channels * height * width)
    return (directions / directions.norm(dim=1, keepdim=True)).view(
        projections, channels, height, width)


def _projected_sample(images: torch.Tensor, directions: torch.Tensor,
                      samples: int) -> torch.Tensor:
    """(projections, n) sorted projections of ``samples`` of ``images``' patches drawn at
    random (all of them where there are no more)."""
    if directions.shape[2:] == (1, 1):  # pixels: drawn before projecting, which is cheaper
        pixels = images.transpose(0, 1).flatten(1)
        if pixels.shape[1] > samples:
            pixels = pixels[:, torch.randint(pixels.shape[1], (samples,)).to(pixels.device)]
        values = directions.flatten(1) @ pixels
    else:
        values = F.conv2d(images, directions).transpose(0, 1).flatten(1)
        if values.shape[1] > samples:
            values = values[:, torch.randint(values.shape[1], (samples,)).to(values.device)]
    return values.sort(dim=1).values


def smooth_time(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``x`` (any shape, time last) averaged over ``frames`` neighbouring steps with a Hann
    window, the ends extended by their edge values; ``x`` itself for ``frames`` <= 1. Applied
    to a briefly trained voice model's output, it removes a frame-to-frame flicker that a
    listener hears as roughness (benchmarks/RESULTS.md, Voice)."""
    if frames <= 1 or x.shape[-1] < 2:
        return x
    weights = torch.hann_window(frames + 2, periodic=False, dtype=torch.float64)[1:-1]
    weights = (weights / weights.sum()).tolist()
    before, after = frames // 2, (frames - 1) // 2
    # Edges repeated and shifted copies summed, with no reshape or size-dependent index, so an
    # exported model (ONNX) smooths inputs of any length as PyTorch does.
    padded = torch.cat([x[..., :1]] * before + [x] + [x[..., -1:]] * after, dim=-1)
    return sum(w * padded[..., k : k - frames + 1 or None] for k, w in enumerate(weights))


class TimeSmoothing(nn.Module):
    """``smooth_time`` over ``frames`` steps as a module, for a model that is exported."""

    def __init__(self, frames: int):
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smooth_time(x, self.frames)


def r1_penalty(discriminator: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty (Mescheder et al., "Which Training Methods for GANs do actually
    Converge?", 2018): the mean over the batch of |grad_x D(x)|^2 on real images, for each
    example the gradient of the sum of its scores (all patches of a PatchGAN). Keeps the
    discriminator flat around the data, so it cannot sharpen its verdict on a few memorised
    training images. Multiply by gamma / 2; it is built with ``create_graph``, so its backward
    reaches the discriminator's weights. Computed in float32."""
    real = real.detach().float().requires_grad_(True)
    scores = discriminator(real).float()
    (grad,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    """Freeze (False) or unfreeze networks, e.g. the discriminators during a generator step,
    so that no gradient is computed for them."""
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def adam(params, lr: float, betas: tuple[float, float],
         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with the fused kernel where this torch and device have it (several times faster)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def linear_decay(total_steps: int, decay_start_fraction: float = 0.5) -> Callable[[int], float]:
    """LambdaLR factor: 1.0 for the first ``decay_start_fraction`` of the steps, then linear
    to 0.0 at ``total_steps`` (the reference's n_epochs + n_epochs_decay schedule, per step)."""
    start = int(total_steps * decay_start_fraction)
    span = max(total_steps - start, 1)

    def factor(step: int) -> float:
        return max(0.0, min(1.0, (total_steps - step) / span))

    return factor
