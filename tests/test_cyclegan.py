"""CycleGAN translator and the shared network blocks in styletx.nn."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F

from styletx.errors import UsageError
from styletx.nn import (
    GANLoss,
    ImagePool,
    PatchDiscriminator,
    ResnetBlock,
    Upsample,
    init_weights,
    linear_decay,
    norm_layer,
)
from styletx.plugins import cyclegan
from styletx.plugins.cyclegan import CycleGAN, CycleGANConfig, ResnetGenerator

SMALL = dict(ngf=4, ndf=4, n_blocks=1, n_layers_d=2)


def small_model(channels_a=3, channels_b=3, **overrides) -> CycleGAN:
    return CycleGAN(CycleGANConfig(**{**SMALL, **overrides}), channels_a, channels_b)


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# -- styletx.nn ---------------------------------------------------------------------------------
def test_norm_layer_kinds():
    inorm = norm_layer("instance")(8)
    assert isinstance(inorm, torch.nn.InstanceNorm2d)
    assert not inorm.affine and not inorm.track_running_stats
    bnorm = norm_layer("batch")(8)
    assert isinstance(bnorm, torch.nn.BatchNorm2d) and bnorm.affine
    assert isinstance(norm_layer("none")(8), torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown norm"):
        norm_layer("layer")


def test_init_weights_follows_the_reference():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 64, 3), torch.nn.BatchNorm2d(64),
                              torch.nn.Linear(64, 64))
    init_weights(net)
    conv, bn, lin = net
    assert abs(conv.weight.std().item() - 0.02) < 0.002 and abs(conv.weight.mean()) < 0.002
    assert abs(lin.weight.std().item() - 0.02) < 0.002
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and bn.weight.std() < 0.04
    for bias in (conv.bias, bn.bias, lin.bias):
        assert torch.count_nonzero(bias) == 0


def test_resnet_block_and_upsample_shapes():
    x = torch.randn(2, 8, 6, 10)
    for padding in ("reflect", "zero", "replicate"):
        assert ResnetBlock(8, "instance", padding, dropout=0.5)(x).shape == x.shape
    for mode in ("transpose", "resize"):
        assert Upsample(8, 4, mode, "batch")(x).shape == (2, 4, 12, 20)
    with pytest.raises(ValueError, match="upsample"):
        Upsample(8, 4, "bilinear")


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_patch_discriminator_gives_a_patch_map(spectral_norm):
    # 70x70 PatchGAN: 3 stride-2 k4 convs, one stride-1, one 1-channel output: 64 -> 6, 256 -> 30
    d = PatchDiscriminator(3, ndf=4, n_layers=3, spectral_norm=spectral_norm)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert d(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    d2 = PatchDiscriminator(1, ndf=4, n_layers=2)
    assert d2(torch.randn(1, 1, 32, 48)).shape == (1, 1, 6, 10)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 1]
    assert not isinstance(d.model[1], torch.nn.InstanceNorm2d)  # no norm after the first conv
    if spectral_norm:  # init_weights reached the underlying weight
        original = convs[1].parametrizations.weight.original
        assert 0.01 < original.std().item() < 0.03


def test_gan_loss_modes():
    zeros = torch.zeros(2, 1, 3, 3)
    assert GANLoss("lsgan")(zeros, True).item() == pytest.approx(1.0)
    assert GANLoss("lsgan")(zeros, False).item() == pytest.approx(0.0)
    assert GANLoss("lsgan")(torch.ones(2, 1, 3, 3), True).item() == pytest.approx(0.0)
    assert GANLoss("vanilla")(zeros, True).item() == pytest.approx(math.log(2))
    assert GANLoss("vanilla")(torch.full((1, 1, 2, 2), 20.0), True).item() < 1e-6
    with pytest.raises(ValueError, match="gan_mode"):
        GANLoss("wgan")


def test_image_pool_fills_then_swaps():
    torch.manual_seed(0)
    pool = ImagePool(size=6)
    first = torch.randn(4, 3, 8, 8)
    assert torch.equal(pool.query(first), first)  # still filling: passed through and stored
    second = torch.randn(4, 3, 8, 8)
    out = pool.query(second)
    assert out.shape == second.shape and len(pool) == 6
    assert torch.equal(out[:2], second[:2])  # the last two free slots
    known = list(first) + list(second)
    for _ in range(10):
        batch = torch.randn(4, 3, 8, 8)
        out = pool.query(batch)
        assert out.shape == batch.shape
        for image in out:  # every returned image is either new or one generated earlier
            assert any(torch.equal(image, k) for k in known + list(batch))
        known += list(batch)
    assert not all(torch.equal(a, b) for a, b in zip(out, batch))  # some were swapped
    assert not out.requires_grad


def test_image_pool_follows_the_images_dtype_and_device():
    pool = ImagePool(2)
    pool.load_state_dict({"images": torch.zeros(2, 1, 4, 4, dtype=torch.float64)})
    for _ in range(5):
        assert pool.query(torch.ones(3, 1, 4, 4)).dtype == torch.float32
    assert pool.state_dict()["images"].dtype == torch.float32


def test_image_pool_size_zero_passes_through():
    pool = ImagePool(0)
    x = torch.randn(2, 1, 4, 4)
    assert pool.query(x) is x and len(pool) == 0


def test_image_pool_state_dict_roundtrip_and_determinism():
    def run(pool, seed):
        torch.manual_seed(seed)
        return [pool.query(torch.randn(3, 2, 4, 4)) for _ in range(8)]

    empty = roundtrip(ImagePool(5).state_dict())
    assert empty["images"].numel() == 0
    restored = ImagePool(5)
    restored.load_state_dict(empty)
    assert len(restored) == 0

    a, b = ImagePool(5), ImagePool(5)
    for x, y in zip(run(a, 1), run(b, 1)):  # the same seed draws the same images
        assert torch.equal(x, y)
    state = roundtrip(a.state_dict())
    assert set(state) == {"images"} and state["images"].shape == (5, 2, 4, 4)
    c = ImagePool(5)
    c.load_state_dict(state)
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    expected = [a.query(torch.randn(3, 2, 4, 4)) for _ in range(4)]
    torch.set_rng_state(rng)
    for x, y in zip(expected, [c.query(torch.randn(3, 2, 4, 4)) for _ in range(4)]):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="more than size"):
        ImagePool(2).load_state_dict(state)


def test_linear_decay():
    f = linear_decay(100)
    assert [f(0), f(25), f(50), f(75), f(100)] == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0])
    assert f(120) == 0.0
    g = linear_decay(10, decay_start_fraction=0.0)
    assert g(0) == 1.0 and g(5) == pytest.approx(0.5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(8))
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2] * 5 + [0.15, 0.1, 0.05])


# -- generator ----------------------------------------------------------------------------------
@pytest.mark.parametrize("upsample", ["transpose", "resize"])
@pytest.mark.parametrize("channels", [(3, 3), (1, 3), (3, 1)])
def test_generator_keeps_the_size(upsample, channels):
    in_ch, out_ch = channels
    g = ResnetGenerator(in_ch, out_ch, ngf=4, n_blocks=1, upsample=upsample)
    for h, w in [(32, 32), (16, 40), (36, 12), (8, 12)]:
        y = g(torch.rand(2, in_ch, h, w) * 2 - 1)
        assert y.shape == (2, out_ch, h, w)
        assert y.abs().max() <= 1.0  # tanh head


def test_residual_generator_starts_as_the_identity():
    x = torch.rand(2, 3, 16, 20) * 2 - 1
    g = ResnetGenerator(3, 3, ngf=4, n_blocks=1, residual=True)
    assert torch.allclose(g(x), x)
    plain = ResnetGenerator(3, 3, ngf=4, n_blocks=1)
    assert (plain(x) - x).abs().mean() > 0.1
    # different channel counts: no identity to start from, so the reference tanh head
    gray2rgb = ResnetGenerator(1, 3, ngf=4, n_blocks=1, residual=True)
    assert not gray2rgb.residual and gray2rgb(x[:, :1]).shape == (2, 3, 16, 20)


# -- translator ---------------------------------------------------------------------------------
def test_config_defaults_are_the_reference_and_validated():
    c = CycleGANConfig()
    assert (c.ngf, c.ndf, c.n_blocks, c.n_layers_d, c.norm, c.upsample) == (
        64, 64, 9, 3, "instance", "transpose")
    assert (c.gan_mode, c.lambda_cycle, c.lambda_identity, c.pool_size) == ("lsgan", 10.0, 0.5, 50)
    assert (c.lr, c.beta1, c.beta2, c.decay_start, c.residual) == (2e-4, 0.5, 0.999, 0.5, False)
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(CycleGANConfig))
    with pytest.raises(UsageError, match="norm"):
        CycleGANConfig(norm="layer")
    with pytest.raises(UsageError, match="upsample"):
        CycleGANConfig(upsample="bilinear")
    for name, preset in CycleGAN.presets.items():
        assert preset.description, name
        CycleGANConfig(**preset.config)


def test_registers_through_the_hook():
    registered = []
    cyclegan.register_translators(register=registered.append)
    assert registered == [CycleGAN]
    assert CycleGAN.name == "cyclegan" and not CycleGAN.paired


def test_networks_and_translate():
    model = small_model(1, 3)
    nets = model.networks()
    assert sorted(nets) == ["D_A", "D_B", "G_A", "G_B"]
    assert model.size_multiple == 4
    a, b = torch.rand(2, 1, 16, 24), torch.rand(2, 3, 16, 24)
    assert nets["D_A"](b).shape[1] == 1 and nets["D_B"](a).shape[1] == 1  # D_A judges B images
    y = model.translate(a, "a2b")
    assert y.shape == (2, 3, 16, 24) and y.dtype == torch.float32 and not y.requires_grad
    assert model.translate(b, "b2a").shape == (2, 1, 16, 24)
    rows = model.preview({"a": a, "b": b})
    assert [r[1].shape[0] for r in rows] == [3, 1]
    with pytest.raises(ValueError, match="direction"):
        model.translate(a, "a2a")
    with pytest.raises(ValueError, match="multiples of 4"):
        model.translate(torch.rand(1, 1, 18, 24), "a2b")
    with pytest.raises(ValueError, match="expects"):
        model.translate(b, "a2b")


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def test_training_step_updates_every_network():
    torch.manual_seed(0)
    model = small_model()
    model.configure_optimizers(total_steps=10)
    assert sorted(model.optimizers) == sorted(model.schedulers) == ["D", "G"]
    before = {name: _params(net) for name, net in model.networks().items()}
    batch = {"a": torch.rand(2, 3, 16, 16) * 2 - 1, "b": torch.rand(2, 3, 16, 16) * 2 - 1}
    losses = model.training_step(batch, 0)
    assert set(losses) == {"G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses.values())
    assert losses["idt_A"] > 0 and losses["idt_B"] > 0
    for name, net in model.networks().items():
        changed = [not torch.equal(p0, p1) for p0, p1 in zip(before[name], net.parameters())]
        assert all(changed), name
        assert all(p.requires_grad for p in net.parameters())  # discriminators unfrozen again
    assert len(model.pool_A) == len(model.pool_B) == 2


def test_identity_loss_skipped_when_channels_differ():
    torch.manual_seed(0)
    model = small_model(1, 3)
    assert not model.use_identity
    model.configure_optimizers(total_steps=10)
    losses = model.training_step({"a": torch.rand(2, 1, 16, 16), "b": torch.rand(2, 3, 16, 16)}, 0)
    assert losses["idt_A"] == losses["idt_B"] == 0.0
    assert all(math.isfinite(v) for v in losses.values())
    assert not small_model(3, 3, lambda_identity=0.0).use_identity


def test_batchnorm_model_trains():
    model = small_model(norm="batch", spectral_norm=True, gan_mode="vanilla", upsample="resize")
    model.configure_optimizers(total_steps=4)
    losses = model.training_step({"a": torch.rand(2, 3, 16, 16), "b": torch.rand(2, 3, 16, 16)}, 0)
    assert all(math.isfinite(v) for v in losses.values())


def test_bf16_autocast_path():
    model = small_model(pool_size=2)
    model.amp = True  # Translator.to enables it only on CUDA; CPU autocast runs the same code
    model.configure_optimizers(total_steps=4)
    for step in range(2):
        losses = model.training_step({"a": torch.rand(2, 3, 16, 16),
                                      "b": torch.rand(2, 3, 16, 16)}, step)
        assert all(math.isfinite(v) for v in losses.values())
    assert model.translate(torch.rand(1, 3, 16, 16), "a2b").dtype == torch.float32
    model.amp = False  # a resume without autocast gets float32 fakes next to bf16 ones
    model.training_step({"a": torch.rand(2, 3, 16, 16), "b": torch.rand(2, 3, 16, 16)}, 2)
    assert model.extra_state()["pool_A.images"].dtype == torch.float32


def test_extra_state_saves_the_pools():
    torch.manual_seed(0)
    model = small_model(pool_size=3)
    model.configure_optimizers(total_steps=10)
    for step in range(2):
        model.training_step({"a": torch.rand(2, 3, 16, 16), "b": torch.rand(2, 3, 16, 16)}, step)
    state = roundtrip(model.extra_state())
    assert set(state) == {"pool_A.images", "pool_B.images"}
    assert state["pool_A.images"].shape == (3, 3, 16, 16)
    fresh = small_model(pool_size=3)
    fresh.load_extra_state(state)
    for p, q in ((model.pool_A, fresh.pool_A), (model.pool_B, fresh.pool_B)):
        assert all(torch.equal(x, y) for x, y in zip(p.images, q.images))


# -- learning check -----------------------------------------------------------------------------
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


@pytest.mark.slow
def test_tiny_preset_learns_a_colour_transform():
    preset = CycleGAN.presets["tiny"]
    torch.manual_seed(0)
    model = CycleGAN(CycleGANConfig(**preset.config), 3, 3)
    steps, n, size = 150, preset.train["batch_size"], preset.train["size"]
    model.configure_optimizers(steps)
    rng = torch.Generator().manual_seed(1)
    for step in range(steps):  # unpaired: a and b come from independent draws
        batch = {"a": reddish_images(n, rng, size),
                 "b": swap_red_blue(reddish_images(n, rng, size))}
        model.training_step(batch, step)
        for scheduler in model.schedulers.values():
            scheduler.step()
    held_out = reddish_images(64, torch.Generator().manual_seed(99), size)
    truth = swap_red_blue(held_out)
    learned = (model.translate(held_out, "a2b").clamp(-1, 1) - truth).abs().mean().item()
    untranslated = (held_out - truth).abs().mean().item()
    # measured 0.097 against 0.523 (other seeds 0.091-0.096); the failure modes seen while
    # tuning (residual head, no identity loss) sat at 0.35-0.52
    assert learned < 0.5 * untranslated, (learned, untranslated)
