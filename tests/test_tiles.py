"""Large images in tiles (styletx.engine.tiles): the same function in every tile, no seam, the
right size, and whole conversion for the translators that cannot be tiled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from styletx.demo import make_scene
from styletx.engine import tiles
from styletx.engine.convert import load_run


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 128 pixels overlapping by 32, for images above 128 x 128 (tiles must stay
    large next to what the network sees around a pixel, as the real 768 are)."""
    monkeypatch.setattr(tiles, "TILE", 128)
    monkeypatch.setattr(tiles, "OVERLAP", 32)
    monkeypatch.setattr(tiles, "WHOLE_PIXELS", 128 * 128)
    monkeypatch.setattr(tiles, "STATS_SIDE", 150)


def scene(height: int, width: int) -> torch.Tensor:
    """A generated scene scaled up: large smooth regions, as in a photograph."""
    picture = make_scene(np.random.default_rng(1), 64)
    x = torch.from_numpy(picture.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return nn.functional.interpolate(x, (height, width), mode="bilinear")


@pytest.mark.parametrize("norm", [nn.InstanceNorm2d(4), nn.InstanceNorm2d(4, affine=True),
                                  nn.GroupNorm(1, 4), nn.GroupNorm(2, 4)])
def test_fixed_statistics_of_the_input_itself_give_the_norm(norm):
    torch.manual_seed(0)
    if norm.weight is not None:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(1, 4, 9, 7) * 3 + 1
    expected = norm(x)
    stats = {norm: tiles._moments(norm, x)}
    with tiles._fixed_statistics(norm, stats):
        fixed = norm(x)
    assert torch.allclose(fixed, expected, atol=1e-5)
    assert "forward" not in vars(norm)  # the class's forward is back


def test_a_large_image_is_converted_in_tiles_without_seams(trained_run, small_tiles,
                                                           monkeypatch):
    run = load_run(trained_run, device="cpu")
    calls = []
    whole_call = run._convert_whole

    def counted(x, direction):
        calls.append(tuple(x.shape[-2:]))
        return whole_call(x, direction)

    monkeypatch.setattr(run, "_convert_whole", counted)
    x = scene(200, 300)
    tiled = run.convert_tensor(x)
    assert tiled.shape == (1, 3, 200, 300)
    # one pass over the reduced copy (150 wide), then 2 x 3 tiles of 128
    assert calls[0] == (100, 150) and calls[1:] == [(128, 128)] * 6
    # against the whole image through the same normalisation statistics: only what the
    # network sees near a tile's edge differs, and the blending hides it
    networks = nn.ModuleList(run.translator.networks().values())
    stats = tiles._statistics(lambda t: whole_call(t, "a2b"), networks, tiles._reduced(x))
    with tiles._fixed_statistics(networks, stats):
        whole = whole_call(x, "a2b")
    mse = ((tiled - whole) / 2).pow(2).mean()
    assert 10 * torch.log10(1 / mse) > 40  # 46.8 dB measured


def test_small_images_and_untileable_translators_are_converted_whole(trained_run, small_tiles,
                                                                      monkeypatch):
    run = load_run(trained_run, device="cpu")
    used = []
    monkeypatch.setattr(tiles, "translate_tiled", lambda *a: used.append(1))
    monkeypatch.setattr("styletx.engine.convert.translate_tiled",
                        lambda *a: used.append(1) or torch.zeros(1))
    run.convert_tensor(torch.zeros(1, 3, 128, 128))  # not above WHOLE_PIXELS
    monkeypatch.setattr(type(run.translator), "tileable", False)
    y = run.convert_tensor(torch.zeros(1, 3, 200, 300))
    assert used == [] and y.shape == (1, 3, 200, 300)
