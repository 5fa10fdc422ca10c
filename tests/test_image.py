"""The image domain and the rgb / gray encoders: formats, modes, bit depths, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from styletx import BadInputError, UsageError
from styletx.plugins import image
from styletx.plugins.image import GrayEncoder, ImageDomain, ImageSample, RGBEncoder

H, W = 24, 40


def gradient_rgb(h: int = H, w: int = W) -> np.ndarray:
    """A smooth uint8 (h, w, 3) image: lossy codecs keep it within a few levels."""
    y, x = np.mgrid[0:h, 0:w]
    r = x * 255 // (w - 1)
    g = y * 255 // (h - 1)
    b = (x + y) * 255 // (w + h - 2)
    return np.stack([r, g, b], axis=2).astype(np.uint8)


def write(path, arr: np.ndarray, **options):
    Image.fromarray(arr).save(path, **options)
    return path


@pytest.fixture
def domain():
    return ImageDomain()


# -- round trips per format ---------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, fmt, lossy",
    [(".png", "PNG", False), (".bmp", "BMP", False), (".tif", "TIFF", False),
     (".tiff", "TIFF", False), (".jpg", "JPEG", True), (".jpeg", "JPEG", True),
     (".webp", "WEBP", True)],
)  # fmt: skip
def test_round_trip(tmp_path, domain, suffix, fmt, lossy):
    arr = gradient_rgb()
    sample = domain.load(write(tmp_path / f"in{suffix}", arr))
    assert (sample.format, sample.mode, sample.bits, sample.alpha) == (fmt, "RGB", 8, None)
    assert sample.pixels.dtype == np.float32 and sample.pixels.shape == (H, W, 3)
    assert_close(sample.pixels * 255, arr, lossy)

    enc = RGBEncoder()
    out = enc.decode(enc.encode(sample), like=sample)
    domain.save(out, tmp_path / f"out{suffix}")
    with Image.open(tmp_path / f"out{suffix}") as img:
        assert (img.format, img.mode) == (fmt, "RGB")
        assert_close(np.asarray(img), arr, lossy)


def assert_close(values: np.ndarray, expected: np.ndarray, lossy: bool):
    """Exact for lossless formats; a few levels on average for JPEG / WebP at quality 95."""
    error = np.abs(values.astype(np.float32) - expected)
    assert error.mean() < 3 if lossy else error.max() == 0


def test_grayscale_stays_gray(tmp_path, domain):
    arr = gradient_rgb()[:, :, 0]
    sample = domain.load(write(tmp_path / "g.png", arr))
    assert (sample.mode, sample.channels, sample.bits) == ("L", 1, 8)
    enc = GrayEncoder()
    out = enc.decode(enc.encode(sample), like=sample)
    assert out.mode == "L"
    domain.save(out, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), arr)


def test_rgba_keeps_alpha_exactly(tmp_path, domain):
    arr = np.dstack([gradient_rgb(), np.arange(H * W, dtype=np.uint8).reshape(H, W)])
    sample = domain.load(write(tmp_path / "a.png", arr))
    assert (sample.mode, sample.channels) == ("RGBA", 3)
    np.testing.assert_array_equal(np.round(sample.alpha * 255), arr[:, :, 3])
    enc = RGBEncoder()
    assert enc.encode(sample).shape == (3, H, W)  # alpha is not part of the tensor
    out = enc.decode(enc.encode(sample), like=sample)
    domain.save(out, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as img:
        assert img.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(img), arr)


def test_gray_alpha_png(tmp_path, domain):
    arr = np.dstack([gradient_rgb()[:, :, 0], np.full((H, W), 128, np.uint8)])
    sample = domain.load(write(tmp_path / "la.png", arr))
    assert (sample.mode, sample.channels) == ("LA", 1)
    domain.save(sample, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as img:
        assert img.mode == "LA"
        np.testing.assert_array_equal(np.asarray(img), arr)


def test_16_bit_gray_png_keeps_16_bits(tmp_path, domain):
    arr = np.full((H, W), 1000, np.uint16)
    arr[0, 0], arr[-1, -1] = 0, 65535
    sample = domain.load(write(tmp_path / "d.png", arr))
    assert (sample.bits, sample.channels) == (16, 1)
    assert abs(sample.pixels[5, 5, 0] * 65535 - 1000) < 0.5
    enc = GrayEncoder()
    out = enc.decode(enc.encode(sample), like=sample)
    assert out.bits == 16
    domain.save(out, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as img:
        assert img.mode.startswith("I")  # 16-bit, not L
        saved = np.asarray(img).astype(int)
    assert np.abs(saved - arr).max() <= 1


def test_16_bit_rgb_is_written_with_8_bits(tmp_path, domain):
    sample = ImageSample.from_array(gradient_rgb().astype(np.uint16) * 257)
    assert sample.bits == 16
    domain.save(sample, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), gradient_rgb())


def test_palette_images(tmp_path, domain):
    opaque = Image.fromarray(gradient_rgb()).convert("P")
    opaque.save(tmp_path / "p.png")
    sample = domain.load(tmp_path / "p.png")
    assert (sample.mode, sample.channels, sample.alpha) == ("P", 3, None)

    see_through = opaque.copy()
    see_through.save(tmp_path / "pt.png", transparency=0)
    sample = domain.load(tmp_path / "pt.png")
    assert sample.channels == 3 and sample.alpha is not None
    assert sample.alpha.min() == 0 and sample.alpha.max() == 1


def test_bilevel_and_cmyk_images(tmp_path, domain):
    Image.fromarray(gradient_rgb()[:, :, 0] > 127).save(tmp_path / "b.png")
    sample = domain.load(tmp_path / "b.png")
    assert (sample.mode, sample.channels) == ("1", 1)
    assert set(np.unique(sample.pixels)) == {0.0, 1.0}

    Image.fromarray(gradient_rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    sample = domain.load(tmp_path / "c.jpg")
    assert (sample.mode, sample.channels) == ("CMYK", 3)


def test_exif_orientation_is_applied(tmp_path, domain):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(gradient_rgb()).save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert domain.load(tmp_path / "o.jpg").pixels.shape == (W, H, 3)


def _profile(space: bytes) -> bytes:
    """An sRGB ICC profile, with its colour space field (bytes 16-19) set to ``space``."""
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return profile[:16] + space + profile[20:]


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_a_converted_image_keeps_its_profile_exif_and_resolution(tmp_path, domain, suffix):
    """They were dropped: a Display P3 photo then shows in sRGB, duller; a photo library
    loses its date and camera. The orientation is not kept: the pixels are upright."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0132], exif[0x0112] = "Canon", "2024:01:02 03:04:05", 6
    source, out = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    Image.fromarray(gradient_rgb()).save(source, icc_profile=_profile(b"RGB "),
                                         exif=exif.tobytes(), dpi=(300, 300))
    sample = domain.load(source)
    enc = RGBEncoder()
    domain.save(enc.decode(enc.encode(sample), like=sample), out)
    with Image.open(out) as img:
        assert img.size == (H, W)  # upright
        assert img.info["icc_profile"] == _profile(b"RGB ")
        tags = {tag: value for tag, value in img.getexif().items()  # a TIFF's: its header too
                if tag in (0x010F, 0x0132, 0x0112)}
        assert tags == {0x010F: "Canon", 0x0132: "2024:01:02 03:04:05"}
        if suffix != ".webp":  # WebP has no resolution field
            assert img.info["dpi"] == pytest.approx((300, 300), abs=0.01)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_a_malformed_exif_block_does_not_refuse_the_picture(tmp_path, domain):
    broken = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x0f\x00\x02\xff\xff\xff\xff"
    Image.fromarray(gradient_rgb()).save(tmp_path / "e.jpg", exif=broken)
    sample = domain.load(tmp_path / "e.jpg")
    assert sample.pixels.shape == (H, W, 3) and "exif" not in sample.metadata


def test_a_profile_of_other_channels_is_not_written(tmp_path, domain):
    """A CMYK JPEG is converted to RGB: its CMYK profile does not describe what is written."""
    Image.fromarray(gradient_rgb()).convert("CMYK").save(tmp_path / "c.jpg",
                                                         icc_profile=_profile(b"CMYK"))
    sample = domain.load(tmp_path / "c.jpg")
    assert sample.metadata["icc_profile"][16:20] == b"CMYK"
    domain.save(sample, tmp_path / "out.jpg")
    with Image.open(tmp_path / "out.jpg") as img:
        assert "icc_profile" not in img.info


def test_a_file_of_several_pages_is_read_as_its_first_with_a_warning(tmp_path, domain, caplog,
                                                                    monkeypatch):
    import logging

    pages = [Image.fromarray(gradient_rgb()), Image.new("RGB", (W, H), (255, 0, 0))]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="styletx"):
        sample = domain.load(tmp_path / "pages.tif")
    assert np.array_equal(np.round(sample.pixels * 255).astype(np.uint8), gradient_rgb())
    assert caplog.messages == [f"{tmp_path / 'pages.tif'}: 2 pages or frames; only the first "
                               "is read"]


# -- saving -------------------------------------------------------------------------------


def test_alpha_is_dropped_where_the_format_has_none(tmp_path, domain):
    rgba = np.dstack([gradient_rgb(), np.full((H, W), 7, np.uint8)])
    sample = ImageSample.from_array(rgba)
    for suffix in (".jpg", ".bmp"):
        domain.save(sample, tmp_path / f"out{suffix}")
        with Image.open(tmp_path / f"out{suffix}") as img:
            assert img.mode == "RGB"
    domain.save(sample, tmp_path / "out.webp")
    with Image.open(tmp_path / "out.webp") as img:
        assert img.mode == "RGBA"


def test_save_rounds_instead_of_truncating(tmp_path, domain):
    sample = ImageSample.from_array(np.full((2, 2), 0.999 * 200 / 255, np.float32))
    domain.save(sample, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as img:
        assert np.asarray(img)[0, 0] == 200


def test_save_format_comes_from_suffix(tmp_path, domain):
    sample = ImageSample.from_array(gradient_rgb())
    domain.save(sample, tmp_path / ".out.tmp.jpg")
    with Image.open(tmp_path / ".out.tmp.jpg") as img:
        assert img.format == "JPEG"
    with pytest.raises(UsageError, match="suffix"):
        domain.save(sample, tmp_path / "out.xyz")


# -- encoders -----------------------------------------------------------------------------


def test_encoders_map_to_exact_endpoints():
    sample = ImageSample.from_array(np.array([[0, 255]], np.uint8))
    for enc in (RGBEncoder(), GrayEncoder()):
        x = enc.encode(sample)
        assert x.dtype == torch.float32 and x.shape == (enc.channels, 1, 2)
        assert torch.all(x[:, 0, 0] == -1) and torch.all(x[:, 0, 1] == 1)
    white = ImageSample.from_array(np.full((1, 1, 3), 255, np.uint8))
    assert GrayEncoder().encode(white).item() == 1


def test_gray_encoder_luminance():
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30]]], np.uint8)
    y = (GrayEncoder().encode(ImageSample.from_array(colours))[0, 0] + 1) / 2
    expected = colours.astype(np.float32) / 255 @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(y.numpy(), expected[0], atol=1e-6)


def test_decode_clamps_and_adjusts_mode():
    like = ImageSample.from_array(np.zeros((4, 6), np.uint8))
    out = RGBEncoder().decode(torch.full((3, 4, 6), 5.0), like=like)
    assert out.mode == "RGB" and out.pixels.max() == 1  # gray source, colour output
    out = GrayEncoder().decode(torch.full((1, 4, 6), -5.0))
    assert (out.mode, out.format, out.bits, out.alpha) == ("L", None, 8, None)
    assert out.pixels.min() == 0
    with pytest.raises(ValueError, match="expected"):
        GrayEncoder().decode(torch.zeros(3, 4, 6))


def test_decode_resizes_alpha_to_the_output():
    like = ImageSample.from_array(np.dstack([gradient_rgb(), np.full((H, W), 255, np.uint8)]))
    out = RGBEncoder().decode(torch.zeros(3, 2 * H, 2 * W), like=like)
    assert out.alpha.shape == (2 * H, 2 * W)
    np.testing.assert_allclose(out.alpha, 1)
    assert (out.mode, out.bits) == ("RGBA", 8)


# -- from_array ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arr, channels, has_alpha, mode, bits",
    [(np.zeros((4, 5), np.uint8), 1, False, "L", 8),
     (np.zeros((4, 5, 1), np.uint8), 1, False, "L", 8),
     (np.zeros((4, 5, 2), np.uint8), 1, True, "LA", 8),
     (np.zeros((4, 5, 3), np.uint8), 3, False, "RGB", 8),
     (np.zeros((4, 5, 4), np.uint8), 3, True, "RGBA", 8),
     (np.zeros((4, 5), np.uint16), 1, False, "I;16", 16),
     (np.zeros((4, 5, 3), np.uint16), 3, False, "RGB", 16),
     (np.zeros((4, 5, 3), np.float64), 3, False, "RGB", 8)],
)  # fmt: skip
def test_from_array(arr, channels, has_alpha, mode, bits):
    s = ImageSample.from_array(arr)
    assert s.pixels.shape == (4, 5, channels) and s.pixels.dtype == np.float32
    assert (s.alpha is not None, s.mode, s.bits, s.format) == (has_alpha, mode, bits, None)


def test_from_array_scales_and_refuses_bad_input():
    assert ImageSample.from_array(np.full((1, 1), 65535, np.uint16)).pixels.item() == 1
    assert ImageSample.from_array(np.full((1, 1), 0.25)).pixels.item() == 0.25
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageSample.from_array(np.full((2, 2, 3), 255.0))
    with pytest.raises(TypeError, match="int64"):
        ImageSample.from_array(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="array"):
        ImageSample.from_array(np.zeros((2, 2, 5), np.uint8))


# -- bad input ----------------------------------------------------------------------------


def truncated(path, arr, **options):
    write(path, arr, **options)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "make, problem",
    [(lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
     (lambda p: p.write_text("hello, I am not a picture\n"), "not an image file"),
     (lambda p: truncated(p, np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)),
      "corrupt or truncated image"),
     (lambda p: None, "no such file")],
    ids=["empty", "text", "truncated", "missing"],
)  # fmt: skip
def test_bad_png(tmp_path, domain, make, problem):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(BadInputError) as info:
        domain.load(path)
    assert str(path) in str(info.value) and problem in str(info.value)
    assert info.value.path == path


def test_truncated_jpeg(tmp_path, domain):
    path = truncated(tmp_path / "bad.jpg", gradient_rgb(128, 128))
    with pytest.raises(BadInputError, match="corrupt or truncated image"):
        domain.load(path)


def test_directory_is_not_an_image(tmp_path, domain):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(BadInputError, match="not a file"):
        domain.load(tmp_path / "dir.png")


# -- training and domain rules ------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(40, 100), (100, 40), (300, 300)])
def test_prepare_for_training_sets_the_shorter_side(domain, h, w):
    sample = ImageSample.from_array(np.zeros((h, w, 4), np.uint8))
    out = domain.prepare_for_training(sample, 64)
    load = round(64 * 286 / 256)  # 72
    assert min(out.pixels.shape[:2]) == load
    assert max(out.pixels.shape[:2]) == round(max(h, w) * load / min(h, w))
    assert out.alpha is None and out.pixels.dtype == np.float32
    assert domain.training_crop(64) == (64, 64)


def test_domain_rules(domain, tmp_path):
    gray = ImageSample.from_array(np.zeros((2, 2), np.uint8))
    rgb = ImageSample.from_array(np.zeros((2, 2, 3), np.uint8))
    assert domain.default_encoder([gray, gray]) == "gray"
    assert domain.default_encoder([gray, rgb]) == "rgb"
    assert domain.output_name(tmp_path / "x" / "photo.JPG") == "photo.JPG"
    assert domain.handles(tmp_path / "a.TIFF") and not domain.handles(tmp_path / "a.gif")
    assert ImageDomain.flip_augment


def test_plugin_registers_through_the_registry(monkeypatch):
    import styletx.plugins
    from styletx.contract.registry import Registry

    # Only this plugin, so the test does not depend on the other built-ins.
    monkeypatch.setattr(styletx.plugins, "BUILTIN_PLUGINS", ["styletx.plugins.image"])
    r = Registry().load(autoload=False)
    assert r.errors == []
    assert r.domains["image"] is ImageDomain
    assert {"rgb", "gray"} <= set(r.encoders)
    assert all(issubclass(r.encoders[n], styletx.Encoder) for n in ("rgb", "gray"))
    assert r.encoders["gray"].domain == r.encoders["rgb"].domain == image.ImageDomain.name


def test_a_very_large_image_is_one_warning_line_and_a_too_large_one_a_bad_input(
        tmp_path, monkeypatch, caplog):
    """Pillow's DecompressionBombWarning never reaches the user raw: above MAX_IMAGE_PIXELS the
    file is read with one warning naming it, above twice that it is refused as a bad input."""
    import logging
    import warnings

    from PIL import Image

    from styletx.plugins.image import ImageDomain

    monkeypatch.setattr(logging.getLogger("styletx"), "propagate", True)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    large, huge = tmp_path / "large.png", tmp_path / "huge.png"
    Image.new("RGB", (12, 12), (10, 20, 30)).save(large)  # 144 pixels: over 100, under 200
    Image.new("RGB", (20, 20), (10, 20, 30)).save(huge)  # 400 pixels: over 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a raw warning would fail the test
        with caplog.at_level(logging.WARNING, logger="styletx"):
            sample = ImageDomain().load(large)
        assert sample.pixels.shape == (12, 12, 3)
        assert [r.getMessage() for r in caplog.records if "very large" in r.getMessage()] == [
            f"{large}: a very large image (Image size (144 pixels) exceeds limit of 100 pixels, "
            "could be decompression bomb DOS attack.); reading it anyway"]
        with pytest.raises(BadInputError, match="image too large"):
            ImageDomain().load(huge)


def test_gray_images_in_part_of_one_folder_only_are_warned_about(domain, tmp_path, styletx):
    """A trial's scans and gray photos among colour ones in A, none in B: the model learnt to
    colour gray inputs green. A folder of gray images only is a task (colourising)."""
    colour = ImageSample.from_array(gradient_rgb())
    gray = ImageSample.from_array(gradient_rgb()[:, :, 0])
    gray_rgb = ImageSample.from_array(np.repeat(gradient_rgb()[:, :, :1], 3, axis=2))
    def gray_warnings(a: list, b: list) -> list[str]:
        return [w for w in domain.compare_folders({"a": a, "b": b}) if "so few photos" not in w]

    assert gray_warnings([colour, gray, gray_rgb], [colour, colour]) == [
        "2 of the 3 A_DIR files are gray and no B_DIR file is: the model learns to turn gray "
        "into colour as part of the style; leave them out, or add gray examples to B_DIR"]
    assert gray_warnings([gray, gray_rgb], [colour]) == []
    assert gray_warnings([colour, gray], [colour, gray]) == []

    for folder, images in (("a", [gradient_rgb(), gradient_rgb()[:, :, 0]]),
                           ("b", [gradient_rgb()[::-1], gradient_rgb()[:, ::-1]])):
        (tmp_path / folder).mkdir()
        for i, pixels in enumerate(images):
            Image.fromarray(pixels).save(tmp_path / folder / f"{i}.png")
    result = styletx("train", tmp_path / "a", tmp_path / "b", "--preset", "tiny", "--steps",
                     "1", "--size", "16", "--out", tmp_path / "run", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert "Warning: 1 of the 2 A_DIR files (1.png) are gray and no B_DIR file is" in result.stderr


def test_a_few_photos_a_side_are_warned_about(domain):
    """8 different photos a side made 3 of 5 held-out photos worse (their subjects' colours
    taken for the style); 20 or more a side are not warned about."""
    photo = ImageSample.from_array(gradient_rgb())
    assert domain.compare_folders({"a": [photo] * 8, "b": [photo] * 30}) == [
        "A_DIR holds 8 image(s) and B_DIR 30: between so few photos the colours differ by "
        "their subjects as much as by a style, and an unpaired model learns part of that "
        "difference (8 different photos a side made 3 of 5 held-out photos worse); 20 or more "
        "a side, of the same kinds of subject, help most"]
    assert domain.compare_folders({"a": [photo] * 20, "b": [photo] * 20}) == []


class _BGREncoder(RGBEncoder):
    """A plugin's encoder whose tensors are not RGB pixels: channels in reverse order."""

    name = "bgr"

    def encode(self, sample):
        return super().encode(sample).flip(0)

    def decode(self, tensor, like=None):
        return super().decode(tensor.flip(0), like)


def test_a_preview_draws_each_tile_as_its_encoder_decodes_it(tmp_path):
    """A Lab or YCbCr encoder's tensors were drawn as if they were RGB: false colours."""
    red = ImageSample(np.tile(np.array([0.9, 0.1, 0.1], np.float32), (8, 8, 1)))
    bgr = _BGREncoder()
    mask = torch.full((1, 8, 8), 0.5)  # a translator's own one-channel map: drawn as it is
    rows = [[bgr.encode(red), mask]]
    ImageDomain().save_preview(rows, [[bgr, bgr]], tmp_path / "step", titles=[["in", "map"]])
    picture = np.asarray(Image.open(tmp_path / "step.png").convert("RGB"))
    first, second = picture[-1, 0], picture[-1, -1]  # bottom corners of the two tiles
    assert first[0] > 200 and first[2] < 50  # red, not blue
    assert list(second) == [191, 191, 191]  # 0.5 in [-1, 1], gray
