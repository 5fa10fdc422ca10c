"""Flat training crops (one value in every channel: a blank patch, a blank image). Behind
reflect padding, instance norm sees channels of zero variance in such a crop and multiplies the
gradient by ~316 a layer, so unpaired crops are never flat and blank files are skipped by name;
paired crops are kept as drawn (a flat half is supervision there)."""

from __future__ import annotations

import torch
from PIL import Image

from styletx.engine.data import FLAT_JITTER, CropSampler, is_flat
from styletx.plugins.vaegan import VAEGAN, VAEGANConfig

SMALL = dict(ngf=4, n_res=2, ndf=4, n_layers_d=2, num_scales=2)


def _mostly_flat(value: float) -> torch.Tensor:
    """(3, 64, 64): one colour but for a 24 x 24 patch of noise in a corner (a quarter of the
    16-px crops reach it)."""
    x = torch.full((3, 64, 64), value)
    x[:, :24, :24] = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return x


def test_is_flat_needs_every_channel_to_hold_one_value():
    flat = torch.full((3, 8, 8), 0.25)
    flat[1] = -0.5  # a flat colour: each channel one value
    assert is_flat(flat)
    one_pixel = flat.clone()
    one_pixel[2, 3, 3] += 2 / 255  # one 8-bit level in one pixel of one channel
    assert not is_flat(one_pixel)


def test_unpaired_crops_of_a_mostly_blank_example_have_content():
    values = {"a": 0.6, "b": -0.2}
    examples = {side: [_mostly_flat(value)] for side, value in values.items()}
    sampler = CropSampler(examples, (16, 16), batch_size=100, flip=False, paired=False, seed=0)
    batch = sampler.next_batch()
    for side, value in values.items():
        assert not any(is_flat(crop) for crop in batch[side])
        content = [crop for crop in batch[side] if (crop - value).abs().max() > FLAT_JITTER]
        assert len(content) > 75  # drawn again: 1 - 0.77^8 of them, where one draw gives 23 %
        for crop in content:  # cut from the example as it is: its blank part untouched
            blank = (crop - value).abs() < 1e-6
            assert blank.any() or crop.std() > 0.3


def test_an_example_with_no_crop_of_content_gives_jittered_crops():
    examples = {"a": [torch.full((3, 32, 32), 0.5)], "b": [torch.full((3, 32, 32), 1.0)]}
    sampler = CropSampler(examples, (16, 16), batch_size=8, flip=True, paired=False, seed=0)
    batch = sampler.next_batch()
    for side, value in (("a", 0.5), ("b", 1.0)):
        assert not any(is_flat(crop) for crop in batch[side])
        assert (batch[side] - value).abs().max() <= FLAT_JITTER


def test_paired_crops_are_kept_as_drawn():
    """A label map of one class is supervision for pix2pix, whose U-Net takes it."""
    examples = {"a": [torch.full((3, 32, 32), 0.5)], "b": [torch.rand(3, 32, 32)]}
    sampler = CropSampler(examples, (16, 16), batch_size=4, flip=False, paired=True, seed=0)
    assert all(torch.equal(crop, torch.full((3, 16, 16), 0.5))
               for crop in sampler.next_batch()["a"])


def _generator_gradient(batch: dict[str, torch.Tensor]) -> float:
    torch.manual_seed(0)
    model = VAEGAN(VAEGANConfig(**SMALL), 3, 3)
    model.configure_optimizers(total_steps=10)
    model.training_step(batch, 0)
    grads = [p.grad for group in model.optimizers["G"].param_groups for p in group["params"]
             if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


def test_a_flat_crop_explodes_the_gradient_and_the_sampler_keeps_it_away():
    """Why the sampler does it: a white crop in B gives the vaegan a generator gradient
    millions of times a photo's (the default preset took NaN weights at step 1); the crop the
    sampler hands instead (jittered below an 8-bit level) gives an ordinary one."""
    photo = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    white = torch.ones(2, 3, 32, 32)
    ordinary = _generator_gradient({"a": photo, "b": photo.flip(-1)})
    exploded = _generator_gradient({"a": photo, "b": white})
    assert exploded > 1e4 * ordinary
    sampler = CropSampler({"a": [photo[0]], "b": [white[0]]}, (32, 32), batch_size=2,
                          flip=False, paired=False, seed=0)
    assert _generator_gradient({"a": photo, "b": sampler.next_batch()["b"]}) < 10 * ordinary


def test_a_blank_file_is_skipped_by_name_and_a_folder_of_them_refused(tmp_path, styletx):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(3):
        for folder in (a, b):
            pixels = (torch.rand(40, 40, 3, generator=generator) * 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"photo{i}.png")
    Image.new("RGB", (40, 40), (255, 255, 255)).save(b / "white.png")
    run = tmp_path / "run"
    result = styletx("train", a, b, "--model", "vaegan", "--preset", "tiny", "--steps", "2",
                     "--out", run, "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert (f"Warning: skipping {b / 'white.png'}: one value all over, a blank image (nothing "
            "to learn from)") in result.stderr
    assert f"{b}: 3 of 4 readable file(s) can be trained on" in result.stderr

    for i in range(7):  # many blank files: five named, the rest counted (6,760 lines before)
        Image.new("RGB", (40, 40), (i, i, i)).save(b / f"white{i}.png")
    result = styletx("train", a, b, "--model", "vaegan", "--preset", "tiny", "--steps", "2",
                     "--out", tmp_path / "many", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("one value all over, a blank image") == 5
    assert f"... and 3 more blank file(s) of {b} skipped" in result.stderr

    blank = tmp_path / "blank"
    blank.mkdir()
    for i, colour in enumerate([(0, 0, 0), (10, 200, 30)]):
        Image.new("RGB", (40, 40), colour).save(blank / f"{i}.png")
    result = styletx("train", a, blank, "--model", "cyclegan", "--preset", "tiny", "--steps",
                     "2", "--out", tmp_path / "run2", "--threads", "1")
    assert result.exit_code == 2
    assert result.error_lines == [f"Error: {blank}: none of its 2 readable file(s) can be "
                                  "trained on (2 blank: one value all over)"]
    assert not (tmp_path / "run2").exists()


def test_the_preview_shows_the_most_varied_of_the_first_examples():
    """The preview was the centre crop of the first file, flat sky in a scale trial; now of
    the first PREVIEW_CHOICE, the one that varies most (for a pair, the A side's choice)."""
    sky = torch.full((3, 16, 16), 0.4)
    sky[:, 0, 0] = 0.41  # not blank, nearly flat
    detail = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    examples = {"a": [sky, detail, sky.clone()], "b": [detail.clone(), sky.clone(), sky]}
    unpaired = CropSampler(examples, (8, 8), batch_size=1, flip=False, paired=False, seed=0)
    batch = unpaired.fixed_batch()
    assert torch.equal(batch["a"][0], detail[:, 4:12, 4:12])
    assert torch.equal(batch["b"][0], detail[:, 4:12, 4:12])
    paired = CropSampler(examples, (8, 8), batch_size=1, flip=False, paired=True, seed=0)
    assert torch.equal(paired.fixed_batch()["b"][0], sky[:, 4:12, 4:12])  # pair 1's B half
