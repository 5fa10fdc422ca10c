"""The image sample: what the image domain loads and saves, and the rgb / gray encoders see."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ImageSample:
    """One image in memory.

    pixels: float32 ``(H, W, C)`` in [0, 1], C = 1 (gray) or 3 (RGB)
    alpha:  float32 ``(H, W)`` in [0, 1], or None when the image is opaque
    mode:   the source's Pillow mode ("RGB", "RGBA", "L", "LA", "P", "I;16", ...)
    format: the source's Pillow format ("PNG", "JPEG", ...), None for arrays
    bits:   bits per channel of the source, 8 or 16
    metadata: what the source file said about itself, written back with a converted image:
            "icc_profile" (bytes: the colour space its values are in), "exif" (bytes: camera,
            date...; without the orientation, as the pixels are upright), "dpi" ((x, y))
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    mode: str = ""  # empty: named from the channels ("L", "LA", "RGB", "RGBA")
    format: str | None = None
    bits: int = 8
    metadata: dict = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        p = self.pixels
        if p.dtype != np.float32 or p.ndim != 3 or p.shape[2] not in (1, 3):
            raise ValueError(f"pixels must be float32 (H, W, 1|3), got {p.dtype} {p.shape}")
        if self.alpha is not None and self.alpha.shape != p.shape[:2]:
            raise ValueError(f"alpha {self.alpha.shape} does not match pixels {p.shape[:2]}")
        self.mode = self.mode or mode_for(p.shape[2], self.alpha is not None)

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]

    @classmethod
    def from_array(cls, arr: np.ndarray) -> ImageSample:
        """From ``(H, W)``, ``(H, W, 1|2|3|4)`` uint8, uint16 or float (in [0, 1]) arrays.

        2 and 4 channels are gray + alpha and RGB + alpha.
        """
        if hasattr(arr, "detach"):  # a torch tensor, perhaps one that requires grad
            arr = arr.detach().cpu().numpy()
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"expected an (H, W) or (H, W, 1|2|3|4) array, got {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"the image is empty ({arr.shape[0]}x{arr.shape[1]} pixels)")
        bits = 8
        if arr.dtype == np.uint8:
            values = arr.astype(np.float32) / 255
        elif arr.dtype == np.uint16:
            values, bits = arr.astype(np.float32) / 65535, 16
        elif np.issubdtype(arr.dtype, np.floating):
            # A float image in [0, 255] would silently clip to white: refuse it instead.
            if not (arr.min() >= -1e-3 and arr.max() <= 1 + 1e-3):
                raise ValueError(f"float pixels must lie in [0, 1], got [{arr.min()}, {arr.max()}]")
            values = np.clip(arr, 0, 1).astype(np.float32)
        else:
            raise TypeError(f"pixels must be uint8, uint16 or float, got {arr.dtype}")
        colour = values.shape[2] >= 3
        has_alpha = values.shape[2] in (2, 4)
        pixels = values[:, :, :3] if colour else values[:, :, :1]
        alpha = values[:, :, -1] if has_alpha else None
        mode = "I;16" if bits == 16 and not colour and not has_alpha else ""
        return cls(np.ascontiguousarray(pixels), alpha, mode, None, bits)


def mode_for(channels: int, has_alpha: bool) -> str:
    """The Pillow mode of pixels with ``channels`` (1 or 3) and maybe alpha."""
    return ("L" if channels == 1 else "RGB") + ("A" if has_alpha else "")
