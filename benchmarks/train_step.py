"""Time per CycleGAN training step on the CPU: styletx against a plain-PyTorch reference loop.

The reference is written out below the way pytorch-CycleGAN-and-pix2pix's ``CycleGANModel``
does it (its ``ResnetGenerator``, ``NLayerDiscriminator``, ``GANLoss``, ``ImagePool`` and
``optimize_parameters``): two 9-block ResNet generators (ngf 64, reflection padding, instance
norm, transposed-conv up-sampling, tanh), two 70x70 PatchGANs (ndf 64), LSGAN, cycle 10,
identity 0.5, image pools of 50, Adam 2e-4 with betas (0.5, 0.999), one optimizer for both
generators and one for both discriminators. styletx runs ``CycleGAN.training_step`` of its
default preset. Both get the same batches; the reference gets a copy of styletx's initial
weights, so both do the same work, checked three ways: equal parameter counts per network,
equal generator outputs, and equal losses on the first step.

Steps are timed in alternating order (reference, styletx, styletx, reference, ...) after warm-up
steps, so the load of other processes on a shared machine falls on both alike; the medians are
compared.

    python benchmarks/train_step.py [--size 128] [--steps 8] [--warmup 2]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import platform
import random
import statistics
import time

import torch
from torch import nn

from styletx.plugins.cyclegan import CycleGAN, CycleGANConfig

# -----------------------------------------------------------------------------
# the reference, as pytorch-CycleGAN-and-pix2pix writes it (models/networks.py, cycle_gan_model.py)

norm_layer = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True), norm_layer(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True), norm_layer(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, n_blocks: int = 9):
        super().__init__()
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0, bias=True),
                 norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                      norm_layer(ngf * mult * 2), nn.ReLU(True)]
        model += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                         output_padding=1, bias=True),
                      norm_layer(ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        seq = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            seq += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, 4, stride=2, padding=1,
                              bias=True), norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        seq += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, 4, stride=1, padding=1, bias=True),
                norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        seq += [nn.Conv2d(ndf * nf_mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class GANLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("real_label", torch.tensor(1.0))
        self.register_buffer("fake_label", torch.tensor(0.0))
        self.loss = nn.MSELoss()  # lsgan

    def __call__(self, prediction, target_is_real):
        target = self.real_label if target_is_real else self.fake_label
        return self.loss(prediction, target.expand_as(prediction))


class ImagePool:
    def __init__(self, pool_size: int):
        self.pool_size, self.num_imgs, self.images = pool_size, 0, []

    def query(self, images):
        if self.pool_size == 0:
            return images
        return_images = []
        for image in images:
            image = torch.unsqueeze(image.data, 0)
            if self.num_imgs < self.pool_size:
                self.num_imgs += 1
                self.images.append(image)
                return_images.append(image)
            elif random.uniform(0, 1) > 0.5:
                random_id = random.randint(0, self.pool_size - 1)
                tmp = self.images[random_id].clone()
                self.images[random_id] = image
                return_images.append(tmp)
            else:
                return_images.append(image)
        return torch.cat(return_images, 0)


class ReferenceCycleGAN:
    """CycleGANModel's training step (lambda_A = lambda_B = 10, lambda_identity 0.5)."""

    def __init__(self, lr: float = 2e-4, beta1: float = 0.5):
        self.netG_A, self.netG_B = ResnetGenerator(3, 3), ResnetGenerator(3, 3)
        self.netD_A, self.netD_B = NLayerDiscriminator(3), NLayerDiscriminator(3)
        self.fake_A_pool, self.fake_B_pool = ImagePool(50), ImagePool(50)
        self.criterionGAN = GANLoss()
        self.criterionCycle = self.criterionIdt = nn.L1Loss()
        self.optimizer_G = torch.optim.Adam(
            itertools.chain(self.netG_A.parameters(), self.netG_B.parameters()), lr=lr,
            betas=(beta1, 0.999))
        self.optimizer_D = torch.optim.Adam(
            itertools.chain(self.netD_A.parameters(), self.netD_B.parameters()), lr=lr,
            betas=(beta1, 0.999))

    def networks(self) -> dict[str, nn.Module]:
        return {"G_A": self.netG_A, "G_B": self.netG_B, "D_A": self.netD_A, "D_B": self.netD_B}

    @staticmethod
    def set_requires_grad(nets, requires_grad):
        for net in nets:
            for param in net.parameters():
                param.requires_grad = requires_grad

    def forward(self):
        self.fake_B = self.netG_A(self.real_A)
        self.rec_A = self.netG_B(self.fake_B)
        self.fake_A = self.netG_B(self.real_B)
        self.rec_B = self.netG_A(self.fake_A)

    def backward_D_basic(self, netD, real, fake):
        loss_D_real = self.criterionGAN(netD(real), True)
        loss_D_fake = self.criterionGAN(netD(fake.detach()), False)
        loss_D = (loss_D_real + loss_D_fake) * 0.5
        loss_D.backward()
        return loss_D

    def backward_G(self):
        lambda_idt, lambda_A, lambda_B = 0.5, 10.0, 10.0
        self.idt_A = self.netG_A(self.real_B)
        self.loss_idt_A = self.criterionIdt(self.idt_A, self.real_B) * lambda_B * lambda_idt
        self.idt_B = self.netG_B(self.real_A)
        self.loss_idt_B = self.criterionIdt(self.idt_B, self.real_A) * lambda_A * lambda_idt
        self.loss_G_A = self.criterionGAN(self.netD_A(self.fake_B), True)
        self.loss_G_B = self.criterionGAN(self.netD_B(self.fake_A), True)
        self.loss_cycle_A = self.criterionCycle(self.rec_A, self.real_A) * lambda_A
        self.loss_cycle_B = self.criterionCycle(self.rec_B, self.real_B) * lambda_B
        self.loss_G = (self.loss_G_A + self.loss_G_B + self.loss_cycle_A + self.loss_cycle_B
                       + self.loss_idt_A + self.loss_idt_B)
        self.loss_G.backward()

    def optimize_parameters(self, real_A, real_B) -> dict[str, float]:
        self.real_A, self.real_B = real_A, real_B
        self.forward()
        self.set_requires_grad([self.netD_A, self.netD_B], False)
        self.optimizer_G.zero_grad()
        self.backward_G()
        self.optimizer_G.step()
        self.set_requires_grad([self.netD_A, self.netD_B], True)
        self.optimizer_D.zero_grad()
        self.loss_D_A = self.backward_D_basic(self.netD_A, self.real_B,
                                              self.fake_B_pool.query(self.fake_B))
        self.loss_D_B = self.backward_D_basic(self.netD_B, self.real_A,
                                              self.fake_A_pool.query(self.fake_A))
        self.optimizer_D.step()
        names = {"G_A": "loss_G_A", "G_B": "loss_G_B", "cycle_A": "loss_cycle_A",
                 "cycle_B": "loss_cycle_B", "idt_A": "loss_idt_A", "idt_B": "loss_idt_B",
                 "D_A": "loss_D_A", "D_B": "loss_D_B"}
        return {name: getattr(self, attr).item() for name, attr in names.items()}


# -----------------------------------------------------------------------------


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Parameters in the same order and shapes (the modules are named differently)."""
    pairs = list(zip(source.parameters(), target.parameters(), strict=True))
    with torch.no_grad():
        for a, b in pairs:
            assert a.shape == b.shape, (a.shape, b.shape)
            b.copy_(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="crop size in pixels (128)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side (8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side (2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    torch.manual_seed(0)
    random.seed(0)

    config = CycleGANConfig()  # the default preset: the reference architecture
    ours = CycleGAN(config, 3, 3)
    ours.to("cpu")
    ours.train(True)
    ours.configure_optimizers(total_steps=1000)
    ref = ReferenceCycleGAN(config.lr, config.beta1)
    for name, net in ours.networks().items():
        other = ref.networks()[name]
        assert count(net) == count(other), (name, count(net), count(other))
        copy_weights(net, other)

    n, s = args.batch_size, args.size
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.rand(n, 3, s, s, generator=gen) * 2 - 1,
                torch.rand(n, 3, s, s, generator=gen) * 2 - 1)
               for _ in range(args.warmup + args.steps)]

    # Same work: equal generator outputs for equal weights, and equal first-step losses.
    with torch.no_grad():
        a = batches[0][0]
        gap = (ours.G_A(a) - ref.netG_A(a)).abs().max().item()
    assert gap < 1e-4, f"generators differ by {gap}"
    first = {"styletx": ours.training_step({"a": batches[0][0], "b": batches[0][1]}, 0),
             "reference": ref.optimize_parameters(*batches[0])}
    for key, value in first["reference"].items():
        assert abs(first["styletx"][key] - value) <= 1e-3 * max(1.0, abs(value)), (
            key, first["styletx"][key], value)

    def step_ours(i: int) -> None:
        ours.training_step({"a": batches[i][0], "b": batches[i][1]}, i)

    def step_ref(i: int) -> None:
        ref.optimize_parameters(*batches[i])

    times = {"reference": [], "styletx": []}
    for i in range(1, args.warmup + args.steps):
        order = [("reference", step_ref), ("styletx", step_ours)]
        for name, step in (order if i % 2 else order[::-1]):
            start = time.perf_counter()
            step(i)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    params = {name: count(net) for name, net in ours.networks().items()}
    print(f"CycleGAN training step, batch {n} of {s}x{s} crops, CPU: 9-block ResNet generators "
          f"({params['G_A'] / 1e6:.2f} M parameters each), 70x70 PatchGANs "
          f"({params['D_A'] / 1e6:.2f} M each), LSGAN, cycle 10, identity 0.5, pool 50, Adam 2e-4")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); Python {platform.python_version()}")
    print("same work: parameter counts equal per network; generator outputs equal "
          f"(max gap {gap:.1e}); first-step losses equal:")
    print("  " + "  ".join(f"{k} {v:.4f}/{first['styletx'][k]:.4f}"
                           for k, v in first["reference"].items()) + "  (reference/styletx)")
    print()
    print(f"{'method':<40} {'median s':>9} {'min s':>7} {'max s':>7} {'speed-up':>9}")
    ref_median = statistics.median(times["reference"])
    for name, label in (("reference", "reference loop (plain PyTorch)"),
                        ("styletx", "styletx CycleGAN.training_step")):
        t = times[name]
        print(f"{label:<40} {statistics.median(t):9.3f} {min(t):7.3f} {max(t):7.3f} "
              f"{ref_median / statistics.median(t):8.2f}x")
    ratio = ref_median / statistics.median(times["styletx"])
    verdict = "met" if ratio >= 1 else "NOT met"
    print(f"-> styletx {ratio:.2f}x the reference's speed over {args.steps} timed steps each "
          f"(after {args.warmup} warm-up); target: not slower: {verdict}")
    print(f"load average before / after: {' '.join(f'{v:.2f}' for v in load_before)} / "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"date: {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
