"""A tiny vaegan run on the demo's colour transform: its translation against the known answer,
and the latent-space tools: sample, traverse, score, and convert's warning for inputs unlike the
training data. One model is trained for the whole module (300 steps on 48 scenes, one thread:
about 45 s)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from styletx.contract.errors import StyletxError
from styletx.demo import make_image_dataset, save_rgb
from styletx.engine.convert import load_run
from styletx.engine.training import TrainSettings, train
from styletx.image.previews import MIN_TILE, to_picture
from styletx.tools import latent

SIZE = 40  # the scenes' size; the tiny preset trains on 32-pixel crops of them loaded at 36
CROP = 32
N_PROBES = 12


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two random colours in stripes of random angle and period: nothing like a scene."""
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    y, x = np.mgrid[:size, :size]
    on = (np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period) > 0)[..., None]
    colours = rng.uniform(0, 1, (2, 3))
    return np.where(on, colours[0], colours[1])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks gain nothing from a second thread, and on 2 shared cores torch's threads
    wait on each other: training here took 38 s with one thread and 300 s with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae(tmp_path_factory, one_thread):
    """A tiny vaegan run, and probes: held-out scenes (in the domain), noise and stripes."""
    root = tmp_path_factory.mktemp("latent")
    folders = make_image_dataset(root / "data", n_train=48, n_test=N_PROBES, size=SIZE)
    rng = np.random.default_rng(7)
    for i in range(N_PROBES):
        save_rgb(rng.uniform(0, 1, (SIZE, SIZE, 3)), root / "noise" / f"noise{i:02d}.png")
        save_rgb(_stripes(rng, SIZE), root / "stripes" / f"stripes{i:02d}.png")
    run = root / "run"
    train(folders["a"], folders["b"], run, model="vaegan", preset="tiny",
          settings=TrainSettings(steps=300, device="cpu", progress=False, preview_every=300))
    return {"run": run, "held": folders["test_a"], "truth": folders["test_b"],
            "train": folders["a"], "noise": root / "noise", "stripes": root / "stripes"}


def _picture(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _tile(picture: np.ndarray, row: int, col: int, tile_h: int, tile_w: int) -> np.ndarray:
    y, x = row * (tile_h + 2), col * (tile_w + 2)
    return picture[y : y + tile_h, x : x + tile_w]


def _auroc(inside: list[float], outside: list[float]) -> float:
    """P(an outside score > an inside score), ties counted half."""
    a, b = np.array(inside)[None], np.array(outside)[:, None]
    return float((b > a).mean() + 0.5 * (b == a).mean())


# -- translation --------------------------------------------------------------------------------
def test_translation_beats_the_unconverted_input_on_the_colour_transform(vae, styletx):
    """``styletx evaluate`` on 12 held-out scenes whose true winterized versions are known."""
    result = styletx("evaluate", vae["run"], vae["held"], vae["truth"], "--json")
    assert result.exit_code == 0, result.stderr
    mean = json.loads(result.stdout)["mean"]
    gain = mean["converted"]["psnr_db"] - mean["baseline"]["psnr_db"]
    # measured: +4.4 dB (14.8 -> 19.2); data and training seeds 1, 2: +2.0, +5.3 dB. Without
    # the identity loss (UNIT's losses) this went the wrong way: -1.4 dB. SSIM falls (0.76 ->
    # 0.64): the tiny VAE blurs what it reconstructs.
    assert gain > 1.0, mean


# -- the statistics written at the end of training --------------------------------------------
def test_training_statistics(vae):
    stats = latent.load_training_statistics(vae["run"])
    model = load_run(vae["run"], device="cpu")
    for side in "ab":
        scores = stats[side]["scores"]
        assert len(scores) == 48 and scores == sorted(scores)
        assert all(np.isfinite(scores)) and min(scores) > 0
        assert len(stats[side]["latent_std"]) == model.translator.latent_channels
        assert len(stats[side]["latent_mean"]) == model.translator.latent_channels
        assert max(stats[side]["latent_std"]) > 0


# -- sample -------------------------------------------------------------------------------------
def test_sample_writes_a_grid_of_n_tiles(vae, styletx, tmp_path):
    result = styletx("sample", vae["run"], "--domain", "b", "-n", "10", "-o", tmp_path,
                     "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    picture = _picture(tmp_path / "samples.png")
    tile = CROP * (MIN_TILE // CROP)  # enlarged to be looked at
    # 8 per row: two rows, the second with 2 tiles and white after them.
    assert picture.shape == (2 * tile + 2, 8 * tile + 7 * 2, 3)
    tiles = [_tile(picture, r, c, tile, tile) for r, c in [(0, i) for i in range(8)] + [(1, 0),
                                                                                      (1, 1)]]
    assert all(t.std() > 1 for t in tiles)  # pictures, not blank tiles
    assert len({t.tobytes() for t in tiles}) == 10  # ten different samples
    assert (_tile(picture, 1, 2, tile, tile) == 255).all()


def test_sample_api_seed_and_size(vae, tmp_path):
    run = load_run(vae["run"], device="cpu")
    first = latent.sample(run, "a", 3, tmp_path / "one", seed=1, size=48)
    again = latent.sample(run, "a", 3, tmp_path / "two", seed=1, size=48)
    other = latent.sample(run, "a", 3, tmp_path / "three", seed=2, size=48)
    assert first == [tmp_path / "one" / "samples.png"]
    scale = max(1, MIN_TILE // 48)  # --size 48: 48-pixel squares
    assert _picture(first[0]).shape == (48 * scale, 3 * 48 * scale + 2 * 2, 3)
    assert (_picture(first[0]) == _picture(again[0])).all()  # seeded
    assert not (_picture(first[0]) == _picture(other[0])).all()


# -- traverse -----------------------------------------------------------------------------------
def test_traverse_writes_one_picture_per_dimension(vae, styletx, tmp_path):
    source = sorted(vae["held"].iterdir())[0]
    stats = latent.load_training_statistics(vae["run"])["a"]
    busiest = int(np.argmax(stats["latent_std"]))
    dims = sorted({0, busiest})
    result = styletx("traverse", vae["run"], source, "--dims", ",".join(map(str, dims)),
                     "--steps", "5", "-o", tmp_path, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    tile = SIZE * (MIN_TILE // SIZE)
    for d in dims:
        picture = _picture(tmp_path / f"dim{d:02d}.png")
        assert picture.shape == (tile, 5 * tile + 4 * 2, 3)
    assert _picture(tmp_path / "all.png").shape == (len(dims) * (tile + 2) - 2,
                                                     5 * tile + 4 * 2, 3)
    # Walking the channel that varies most changes the picture: -k and +k differ clearly.
    walk = _picture(tmp_path / f"dim{busiest:02d}.png").astype(float)
    assert np.abs(_tile(walk, 0, 0, tile, tile) - _tile(walk, 0, 4, tile, tile)).mean() > 2


def test_traverse_middle_step_is_the_reconstruction(vae, tmp_path):
    run = load_run(vae["run"], device="cpu")
    source = sorted(vae["held"].iterdir())[0]
    latent.traverse(run, source, [1], tmp_path, steps=3, k=2.0)
    x = run.encoders["a"].encode(run.domain.load(source))[None]
    mu, _ = run.translator.encode_latent(x, "a")
    rec = run.translator.decode_latent(mu, "a", size=(SIZE, SIZE))
    tile = SIZE * (MIN_TILE // SIZE)
    middle = _tile(_picture(tmp_path / "dim01.png"), 0, 1, tile, tile)
    assert np.abs(middle.astype(int) - to_picture(rec[0]).astype(int)).max() <= 1


def test_traverse_refuses_bad_dims_and_steps(vae, styletx, tmp_path):
    source = sorted(vae["held"].iterdir())[0]
    channels = latent.load_training_statistics(vae["run"])["a"]["latent_std"]
    for args, message in (
        (("--dims", f"0,{len(channels)}"), f"out of range; this model's latent channels are "
                                           f"0 to {len(channels) - 1}"),
        (("--dims", "-1"), "out of range"),
        (("--dims", "one"), "--dims one: give channel numbers"),
        (("--steps", "1"), "--steps must be at least 2"),
        (("--range", "0"), "--range must be a positive number"),
    ):
        result = styletx("traverse", vae["run"], source, *args, "-o", tmp_path)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.error_lines[0], result.stderr
    assert not list(tmp_path.iterdir())


# -- score --------------------------------------------------------------------------------------
def test_score_ranks_out_of_domain_inputs_above_held_out_ones(vae):
    run = load_run(vae["run"], device="cpu")
    held = latent.score(run, [vae["held"]]).scores
    noise = latent.score(run, [vae["noise"]]).scores
    stripes = latent.score(run, [vae["stripes"]]).scores
    inside = [s.score for s in held]
    # Measured with this fixture (one thread): AUROC 0.993 for noise, 0.931 for stripes; over
    # data and training seeds 0, 1, 2: noise 0.99-1.0, stripes 0.81-0.99. Asserted with
    # headroom, as other hardware rounds differently and so trains a slightly different model.
    outside = noise + stripes
    assert _auroc(inside, [s.score for s in noise]) >= 0.9
    assert _auroc(inside, [s.score for s in stripes]) >= 0.75
    # The threshold flags the most unusual probes (measured: 23 of 24; seeds 1, 2: 19, 23) and
    # few held-out scenes (measured: 1 of 12; seeds 1, 2: 2, 0).
    assert max(outside, key=lambda s: s.score).flagged
    assert sum(s.flagged for s in outside) >= 12
    assert sum(s.flagged for s in held) <= 3
    for s in held + noise + stripes:
        assert 0 <= s.percentile <= 100
        assert s.flagged == (s.score > latent.threshold_for(
            latent.load_training_statistics(vae["run"])["a"]["scores"]))


def test_score_cli_table_json_and_bad_files(vae, styletx, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "notes.txt").write_text("hello")
    noise = sorted(vae["noise"].iterdir())[:2]
    held = sorted(vae["held"].iterdir())[:2]
    inputs = [*held, *noise, tmp_path / "broken.png", tmp_path / "notes.txt"]
    result = styletx("score", vae["run"], *inputs, "--device", "cpu")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0].split() == ["file", "score", "percentile", "flag"]
    assert any(str(held[0]) in line for line in result.stdout.splitlines())
    assert "above the threshold" in result.stdout
    errors = result.error_lines
    assert any("broken.png: not an image file" in line for line in errors), errors
    assert any("notes.txt" in line and "not a image file" in line for line in errors), errors
    assert errors[-1] == "Error: 2 file(s) could not be scored"

    result = styletx("score", vae["run"], *held, *noise, "--json", "--domain", "a")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["side"] == "a" and report["threshold"] > 0 and report["failed"] == []
    assert [r["file"] for r in report["inputs"]] == [str(p) for p in (*held, *noise)]
    for r in report["inputs"]:
        assert set(r) == {"file", "score", "percentile", "flagged"}
        assert r["flagged"] == (r["score"] > report["threshold"])


def test_score_on_folders_and_the_other_side(vae, styletx):
    result = styletx("score", vae["run"], vae["held"], "--domain", "b", "--json")
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["inputs"]) == N_PROBES
    result = styletx("score", vae["run"], vae["held"] / "missing.png")
    assert result.exit_code == 2 and "no such file" in result.error_lines[0]


# -- runs without a latent space ----------------------------------------------------------------
def test_other_models_have_no_latent_space(trained_run, styletx, scenes, tmp_path):
    image = sorted(scenes["test_a"].iterdir())[0]
    for args in (("sample", trained_run, "-o", tmp_path),
                 ("traverse", trained_run, image, "-o", tmp_path),
                 ("score", trained_run, image)):
        result = styletx(*args)
        assert result.exit_code == 2, args
        assert result.error_lines == ["Error: the cyclegan model has no latent space (sample, "
                                      "traverse and score need a vaegan run)"]
    assert not list(tmp_path.iterdir())


def test_balance_needs_a_latent_model(scenes, styletx, tmp_path):
    result = styletx("train", scenes["a"], scenes["b"], "--out", tmp_path / "run", "--preset",
                     "tiny", "--device", "cpu", "--steps", "2", "--size", "16", "--balance")
    assert result.exit_code == 2
    assert "--balance needs a model with a latent space" in result.error_lines[0]


# -- convert ------------------------------------------------------------------------------------
def test_convert_warns_for_inputs_unlike_the_training_data(vae, styletx, tmp_path):
    run = load_run(vae["run"], device="cpu")
    odd = max(latent.score(run, [vae["noise"], vae["stripes"]]).scores, key=lambda s: s.score)
    scene = min(latent.score(run, [vae["held"]]).scores, key=lambda s: s.score)
    assert odd.flagged and not scene.flagged
    result = styletx("convert", vae["run"], odd.path, scene.path, "-o", tmp_path / "out",
                     "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning")]
    assert warnings == [f"Warning: {odd.path}: unlike the training data (score {odd.score:.3f}, "
                        f"above {odd.percentile:.0f}% of the training examples)"], result.stderr
    assert (tmp_path / "out" / odd.path.name).is_file()
    assert (tmp_path / "out" / scene.path.name).is_file()


def test_full_height_crops_take_their_height_from_the_run(vae, monkeypatch):
    """Audio crops are (every bin, N frames): the height comes from config.json's shapes, else
    from latent.json, else a clear error."""
    run = load_run(vae["run"], device="cpu")
    monkeypatch.setattr(run.domain, "training_crop", lambda size: (None, size))
    assert latent._crop_shape(run, "a", None) == (36, CROP)  # loaded at 36 for 32 crops
    assert latent._crop_shape(run, "a", 20) == (36, 20)
    run.config.shapes = {}  # an older run: no shapes recorded
    assert latent._crop_shape(run, "a", 20) == (36, 20)
    monkeypatch.setattr(latent, "load_training_statistics", lambda path: None)
    with pytest.raises(StyletxError, match="records no example shape"):
        latent._crop_shape(run, "a", None)
