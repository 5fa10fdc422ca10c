"""The ``image`` domain and the ``rgb`` / ``gray`` encoders.

A loaded image is an ``ImageSample``: float32 pixels ``(H, W, C)`` in [0, 1] with C = 1 or 3,
the alpha channel kept aside (training ignores it, conversion puts it back), and enough of the
source's metadata (mode, format, bit depth; colour profile, EXIF, resolution) to write the
converted file like the original.
Encoders map pixels to tensors ``(C, H, W)`` in [-1, 1], the range of a tanh generator.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

import styletx
from styletx import BadInputError, FolderSamples, UsageError
from styletx.image import ImageSample, mode_for
from styletx.image.previews import save_grid

ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}  # formats that can store transparency
SIXTEEN_BIT_FORMATS = {"PNG", "TIFF"}  # formats Pillow writes 16-bit grayscale to
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
GRAY_MODES = {"1", "L", "LA", "La"} | SIXTEEN_BIT_MODES
ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
# EXIF kept in converted images: the main directory's description of the photograph
# (ImageDescription, Make, Model, Software, DateTime, Artist, Copyright) and the Exif and GPS
# directories (exposure, lens, the time taken, the place)
EXIF_DESCRIPTION = {0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298}
EXIF_DIRECTORIES = (0x8769, 0x8825)
SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}
# Fewer photos a side than this: warned that an unpaired model takes part of their subjects for
# the style (8 different photos a side made 3 of 5 held-out photos worse; RESULTS.md, "How hard
# the colours pull").
FEW_PHOTOS = 20

log = logging.getLogger("styletx")
# warnings.catch_warnings swaps the process's one filter list: two threads reading at once
# (styletx.engine.data.Reader) could each restore the other's filters and leave "error" in force
_WARNING_FILTERS = threading.Lock()


# -----------------------------------------------------------------------------
# pixels (the sample type, ImageSample, is styletx.image's)


def load_size(size: int) -> int:
    """The shorter side training brings images to for ``size``-pixel crops (286 for 256)."""
    return round(size * 286 / 256)


def _resize(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of one float plane ``(h, w)`` -> ``(height, width)``, kept in [0, 1]."""
    if plane.shape == (height, width):
        return plane
    out = Image.fromarray(plane.astype(np.float32)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    # Bicubic overshoots at sharp edges; the result must stay a valid image.
    return np.clip(np.asarray(out, dtype=np.float32), 0, 1)


def _quantise(values: np.ndarray, dtype: type) -> np.ndarray:
    """[0, 1] floats -> integers of ``dtype``, rounded (truncation would darken every save)."""
    top = np.iinfo(dtype).max
    return np.round(np.clip(values, 0, 1) * top).astype(dtype)


# -----------------------------------------------------------------------------
# reading


def _open(path: Path) -> tuple[Image.Image, str | None, dict]:
    """Open and fully decode ``path``, upright: (the image, its format, its
    ``ImageSample.metadata``); every failure becomes a ``BadInputError``."""
    if not path.exists():
        raise BadInputError(path, "no such file")
    if not path.is_file():
        raise BadInputError(path, "not a file")
    if path.stat().st_size == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    try:
        with _WARNING_FILTERS, warnings.catch_warnings():
            # Pillow warns (raw, on stderr) above MAX_IMAGE_PIXELS and refuses above twice that:
            # the warning becomes one line naming the file.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(path)
            except Image.DecompressionBombWarning as warning:
                log.warning("%s: a very large image (%s); reading it anyway", path,
                            _reason(warning))
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
    except UnidentifiedImageError:
        raise BadInputError(path, "not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise BadInputError(path, f"image too large ({_reason(exc)})") from None
    except PermissionError:
        raise BadInputError(path, "cannot read file (permission denied)") from None
    # Any other failure on a header Pillow recognised means a bad file, never a crash.
    except Exception as exc:  # noqa: BLE001
        raise BadInputError(path, f"corrupt or truncated image ({_reason(exc)})") from None
    fmt = img.format
    try:
        with img:
            # Decode now: Pillow is lazy, and truncation only shows when pixels are read.
            img.load()
            if getattr(img, "n_frames", 1) > 1:  # a multi-page TIFF, an animated WebP or PNG
                log.warning("%s: %d pages or frames; only the first is read", path,
                            img.n_frames)
            metadata = _metadata(img)  # before the turn: a turned TIFF has no tags left
            img = ImageOps.exif_transpose(img)  # a copy with orientation applied
    # Decoders raise OSError, ValueError, SyntaxError, struct.error, EOFError...: catch all.
    except Exception as exc:  # noqa: BLE001
        raise BadInputError(path, f"corrupt or truncated image ({_reason(exc)})") from None
    return img, fmt, metadata


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _metadata(img: Image.Image) -> dict:
    """What ``ImageSample.metadata`` keeps of an opened image's own data."""
    try:
        exif = _exif_about_the_photo(img)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not refuse the picture
        exif = None
    metadata = {"icc_profile": img.info.get("icc_profile"), "dpi": img.info.get("dpi"),
                "exif": exif}
    return {key: value for key, value in metadata.items() if value}


def _exif_about_the_photo(img: Image.Image) -> bytes | None:
    """The EXIF tags that describe the photograph, not how its pixels are stored: the main
    directory's ``EXIF_DESCRIPTION`` tags and the whole Exif and GPS directories (a TIFF's
    main directory is its own header, and a JPEG's holds the orientation, which the loaded
    pixels no longer need)."""
    source, kept = img.getexif(), Image.Exif()
    for tag in EXIF_DESCRIPTION & source.keys():
        kept[tag] = source[tag]
    directories = {pointer: source.get_ifd(pointer) for pointer in EXIF_DIRECTORIES}
    for pointer, directory in directories.items():
        if directory:
            kept.get_ifd(pointer).update(directory)
    return kept.tobytes() if len(kept) or any(directories.values()) else None


def _to_sample(img: Image.Image, fmt: str | None, metadata: dict) -> ImageSample:
    """Any Pillow mode -> gray or RGB float pixels, alpha apart, 16-bit values kept."""
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.float32)
        # "I" is how some Pillow versions open 16-bit PNGs; "F" is a float TIFF, in [0, 1].
        scale = 1.0 if mode == "F" else 65535.0
        pixels = np.clip(values / scale, 0, 1)[:, :, None]
        return ImageSample(np.ascontiguousarray(pixels), None, mode, fmt, 16, metadata)
    has_alpha = mode in ALPHA_MODES or "transparency" in img.info
    gray = mode in GRAY_MODES
    target = mode_for(1 if gray else 3, has_alpha)  # P, CMYK, YCbCr, ... become RGB(A)
    values = np.asarray(img.convert(target), dtype=np.float32) / 255
    if values.ndim == 2:
        values = values[:, :, None]
    channels = 1 if gray else 3
    pixels = np.ascontiguousarray(values[:, :, :channels])
    alpha = np.ascontiguousarray(values[:, :, channels]) if has_alpha else None
    return ImageSample(pixels, alpha, mode, fmt, 8, metadata)


# -----------------------------------------------------------------------------
# writing


def _format_for(path: Path) -> str:
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UsageError(f"{path}: cannot write images with suffix {path.suffix!r}")
    return fmt


_WARNED: set[str] = set()  # formats whose lack of alpha was told


def _to_pil(sample: ImageSample, fmt: str) -> Image.Image:
    """The Pillow image to write: L / I;16 / LA / RGB / RGBA, as far as ``fmt`` allows."""
    alpha = sample.alpha if fmt in ALPHA_FORMATS else None
    if sample.channels == 1 and sample.bits == 16 and alpha is None and fmt in SIXTEEN_BIT_FORMATS:
        return Image.fromarray(_quantise(sample.pixels[:, :, 0], np.uint16))  # I;16
    # Pillow has no 16-bit RGB or LA: everything else is written with 8 bits per channel.
    planes = sample.pixels if alpha is None else np.dstack([sample.pixels, alpha])
    values = _quantise(planes, np.uint8)
    return Image.fromarray(values[:, :, 0] if values.shape[2] == 1 else values)


def _few_photos(samples: dict[str, Sequence[ImageSample]]) -> str:
    """Between a few photos a side the colours differ by what the photos show as much as by
    the look asked for, and an unpaired model cannot tell the two apart."""
    a, b = len(samples["a"]), len(samples["b"])
    return (f"A_DIR holds {a} image(s) and B_DIR {b}: between so few photos the colours "
            f"differ by their subjects as much as by a style, and an unpaired model learns part "
            f"of that difference (8 different photos a side made 3 of 5 held-out photos "
            f"worse); {FEW_PHOTOS} or more a side, of the same kinds of subject, help most")


def _looks_gray(sample: ImageSample) -> bool:
    """One channel, or three within two 8-bit levels of each other (a black-and-white photo
    saved as RGB, perhaps as a JPEG)."""
    pixels = sample.pixels
    return pixels.shape[2] == 1 or float(np.ptp(pixels, axis=2).max()) <= 2 / 255


def _metadata_options(sample: ImageSample) -> dict:
    """Pillow's save options that write the source's metadata back (formats without a place
    for one ignore it): its colour profile where it describes the written channels (a CMYK
    profile does not describe the RGB written for a CMYK JPEG; dropping a wide-gamut photo's
    Display P3 profile would show it in sRGB, duller), its EXIF and resolution."""
    options = {key: sample.metadata[key] for key in ("exif", "dpi") if key in sample.metadata}
    profile = sample.metadata.get("icc_profile")
    if profile and profile[16:20] == (b"GRAY" if sample.channels == 1 else b"RGB "):
        options["icc_profile"] = profile  # bytes 16-19: the profile's colour space
    return options


# -----------------------------------------------------------------------------
# the domain


def _decoded_for_preview(tile: torch.Tensor, encoder: styletx.Encoder) -> torch.Tensor:
    """``tile`` decoded by ``encoder`` into pixels, as the ``(C, H, W)`` in [-1, 1] that
    ``save_grid`` draws; a tile that is not of the encoder's channels (a translator's own
    picture, e.g. a one-channel map beside RGB tiles) is drawn as it is."""
    if tile.shape[0] != encoder.channels:
        return tile
    decoded = encoder.decode(tile.detach().float().cpu())
    if not isinstance(decoded, ImageSample):
        raise styletx.StyletxError(f"the {encoder.name} encoder's decode gave a "
                                   f"{type(decoded).__module__}.{type(decoded).__name__}, not "
                                   "the ImageSample the image domain loads and saves")
    return torch.from_numpy(np.ascontiguousarray(decoded.pixels)).permute(2, 0, 1) * 2 - 1


class ImageDomain(styletx.Domain):
    """Image files read and written with Pillow."""

    name = "image"
    tiles = True  # large photos are converted in tiles: bounded memory
    extensions = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".webp", ".bmp", ".tif", ".tiff")
    flip_augment = True

    def load(self, path: Path) -> ImageSample:
        return _to_sample(*_open(Path(path)))

    def save(self, sample: ImageSample, path: Path) -> None:
        """Write in the format named by the suffix, so a temporary file must keep it."""
        path = Path(path)
        fmt = _format_for(path)
        if sample.alpha is not None and fmt not in ALPHA_FORMATS and fmt not in _WARNED:
            _WARNED.add(fmt)  # once a process: the user chose the format for every output
            log.warning("%s files hold no transparency: the alpha channel of the inputs that "
                        "have one is dropped (PNG, WebP and TIFF keep it)", fmt)
        _to_pil(sample, fmt).save(path, format=fmt, **SAVE_OPTIONS.get(fmt, {}),
                                  **_metadata_options(sample))

    one_picture_preview = True  # save_preview below still writes one picture

    def save_preview(self, rows: list[list[torch.Tensor]], encoders: list[list[styletx.Encoder]],
                     stem: Path, titles: list[list[str]] | None = None) -> None:
        """Each tile as its side's encoder decodes it: a plugin's encoder (CIE-Lab, YCbCr) had
        its tensors drawn as if they were RGB, in false colours."""
        pictures = [[_decoded_for_preview(tile, encoder) for tile, encoder in zip(row, sides)]
                    for row, sides in zip(rows, encoders)]
        save_grid(pictures, stem.with_suffix(".png"), titles=titles)

    def compare_folders(self, samples: dict[str, Sequence[ImageSample]]) -> list[str]:
        """Gray images in part of one folder and none in the other: an unpaired model learns
        that gray turns to colour (or the reverse) as part of the style, and converts gray
        inputs so (a trial's scans and gray photos among colour ones came out green). A
        folder of gray images only is a task of its own (colourising) and not warned about."""
        gray = {side: [i for i, item in enumerate(items) if _looks_gray(item)]
                for side, items in samples.items()}
        few = len(samples) == 2 and min(map(len, samples.values())) < FEW_PHOTOS
        warnings = [_few_photos(samples)] if few else []
        for side, other in (("a", "b"), ("b", "a")):
            count = len(samples[side])
            if 0 < len(gray[side]) < count and not gray[other]:
                warnings.append(
                    f"{len(gray[side])} of the {count} {side.upper()}_DIR files"
                    f"{FolderSamples.named(samples[side], gray[side])} are gray and no "
                    f"{other.upper()}_DIR file is: the model learns to turn gray into colour "
                    "as part of the style; leave them out, or add gray examples to "
                    f"{other.upper()}_DIR")
        return warnings

    def from_array(self, array: np.ndarray) -> ImageSample:
        try:
            return ImageSample.from_array(array)
        except (TypeError, ValueError) as exc:
            raise styletx.UsageError(f"array: {exc}") from None

    def to_array(self, sample: ImageSample) -> np.ndarray:
        """Float32 ``(H, W, C)`` in [0, 1]; alpha, if any, as the last channel."""
        if sample.alpha is None:
            return sample.pixels
        return np.concatenate([sample.pixels, sample.alpha[:, :, None]], axis=2)

    def default_encoder(self, samples: Sequence[ImageSample]) -> str:
        return "gray" if samples and all(s.channels == 1 for s in samples) else "rgb"

    def split_aligned(self, sample: ImageSample, path: Path) -> tuple[ImageSample, ImageSample]:
        """A on the left half, B on the right (the reference's aligned datasets)."""
        width = sample.pixels.shape[1]
        if width % 2:
            raise BadInputError(path, f"odd width {width}: an --aligned image holds A and B side "
                                      "by side in two halves of equal width")
        half = width // 2
        return tuple(
            dataclasses.replace(sample, pixels=np.ascontiguousarray(sample.pixels[:, part]),
                                alpha=None if sample.alpha is None else sample.alpha[:, part])
            for part in (slice(None, half), slice(half, None))
        )

    metrics = {"psnr_db": "higher", "ssim": "higher"}

    def compare(self, converted: ImageSample, target: ImageSample) -> dict[str, float]:
        """PSNR and SSIM of the pixels in [0, 1] (alpha ignored). A gray image compared with a
        colour one counts as colour. A target of another size is resized to the converted
        image's (which has its input's size), with a warning. SSIM is NaN for images smaller
        than its 11 x 11 window."""
        from styletx.image.metrics import SSIM_RADIUS, psnr, ssim

        x, y = converted.pixels, target.pixels
        if x.shape[:2] != y.shape[:2]:
            log.warning("the true image is %dx%d, the input %dx%d: resized to compare",
                        y.shape[1], y.shape[0], x.shape[1], x.shape[0])
            y = np.stack([_resize(y[:, :, c], *x.shape[:2]) for c in range(y.shape[2])], axis=2)
        if x.shape[2] != y.shape[2]:
            x, y = (np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p for p in (x, y))
        small = min(x.shape[:2]) < 2 * SSIM_RADIUS + 1
        return {"psnr_db": psnr(x, y), "ssim": float("nan") if small else ssim(x, y)}

    def prepare_for_training(self, sample: ImageSample, size: int) -> ImageSample:
        """Shorter side -> ``load_size(size)`` (the CycleGAN reference loads 286 for 256 crops,
        so random crops also shift the content); alpha dropped."""
        load = load_size(size)
        h, w = sample.pixels.shape[:2]
        scale = load / min(h, w)
        new_h, new_w = (load, round(w * scale)) if h <= w else (round(h * scale), load)
        planes = [_resize(sample.pixels[:, :, c], new_h, new_w) for c in range(sample.channels)]
        return dataclasses.replace(sample, pixels=np.stack(planes, axis=2), alpha=None)

    def training_enlargement(self, sample: ImageSample, size: int) -> float:
        return load_size(size) / min(sample.pixels.shape[:2])


# -----------------------------------------------------------------------------
# the encoders


def _pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` in [0, 1] -> float32 ``(C, H, W)`` in [-1, 1] (0 -> -1, 1 -> 1 exactly)."""
    # Arithmetic first: a fresh array, so read-only pixels never become a shared tensor.
    return torch.from_numpy(pixels * 2 - 1).permute(2, 0, 1).contiguous()


def _tensor_to_sample(tensor: torch.Tensor, channels: int, like: ImageSample | None):
    """``(C, H, W)`` in [-1, 1] -> ImageSample, with ``like``'s alpha and metadata."""
    if tensor.ndim != 3 or tensor.shape[0] != channels:
        raise ValueError(f"expected a ({channels}, H, W) tensor, got {tuple(tensor.shape)}")
    values = (tensor.detach().float().cpu().clamp(-1, 1) + 1) / 2
    pixels = values.permute(1, 2, 0).contiguous().numpy()
    if like is None:
        return ImageSample(pixels)
    h, w = pixels.shape[:2]
    alpha = None if like.alpha is None else _resize(like.alpha, h, w)
    # Same channel count: keep the source's mode (P, I;16, ...); else name what we now hold.
    mode = like.mode if like.channels == channels else mode_for(channels, alpha is not None)
    return ImageSample(pixels, alpha, mode, like.format, like.bits, like.metadata)


class RGBEncoder(styletx.Encoder):
    """Pixels -> ``(3, H, W)`` in [-1, 1]; gray images are repeated to 3 channels."""

    name = "rgb"
    domain = "image"
    channels = 3

    def encode(self, sample: ImageSample) -> torch.Tensor:
        x = _pixels_to_tensor(sample.pixels)
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x

    def decode(self, tensor: torch.Tensor, like: ImageSample | None = None) -> ImageSample:
        return _tensor_to_sample(tensor, 3, like)


class GrayEncoder(styletx.Encoder):
    """Pixels -> ``(1, H, W)`` in [-1, 1]; colour becomes luma Y = 0.299 R + 0.587 G + 0.114 B."""

    name = "gray"
    domain = "image"
    channels = 1

    def encode(self, sample: ImageSample) -> torch.Tensor:
        pixels = sample.pixels
        if pixels.shape[2] == 3:
            weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
            # ITU-R BT.601 luma, as Pillow's "L"; clipped as float sums may pass 1 by an ulp.
            pixels = np.clip(pixels @ weights, 0, 1)[:, :, None]
        return _pixels_to_tensor(pixels)

    def decode(self, tensor: torch.Tensor, like: ImageSample | None = None) -> ImageSample:
        return _tensor_to_sample(tensor, 1, like)


# -----------------------------------------------------------------------------
# hooks


@styletx.hookimpl
def register_domains(register):
    register(ImageDomain)


@styletx.hookimpl
def register_encoders(register):
    register(RGBEncoder)
    register(GrayEncoder)
