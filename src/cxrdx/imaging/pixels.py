"""What every reader shares: the image record, the size limits, and gray conversion.

Size limits are checked from the *declared* header size, before decoding, so nothing
big is allocated for a file that cannot be a radiograph. Colour becomes gray with the
ITU-R 601 luma weights computed in float (R = G = B gives back the gray exactly), and
values that do not fit a fixed bit-depth scale are min-max normalised with a warning;
a constant image gives 0, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrdx.errors import ImageReadError

DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 16
MAX_ASPECT = 10.0
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")
ARRAY_NAME = "<array>"


@dataclass
class ImageMeta:
    """Where an image came from and what was done to it (warnings are for the user)."""

    path: str | None
    format: str  # "PNG", "JPEG", "DICOM", "TIFF", "array", ...
    source_size: tuple[int, int]  # (height, width) of the returned image
    bit_depth: int
    photometric: str  # as stored: "MONOCHROME1/2", "RGB", "RGBA", "PALETTE COLOR", "CMYK", ...
    modality: str | None = None
    view: str | None = None
    warnings: list[str] = field(default_factory=list)
    decode_scale: int = 1  # 2, 4 or 8: a JPEG decoded at that reduced DCT scale (cxrdx.imaging.jpeg)


def check_dims(name: Any, height: int, width: int, max_pixels: int) -> None:
    """Refuse sizes that cannot be a radiograph, from the declared header size."""
    n = int(height) * int(width)
    size = f"{width}x{height} pixels (width x height)"
    if n > max_pixels:
        raise ImageReadError(
            name,
            f"too large: {size} = {n:,} pixels exceeds the limit of {max_pixels:,} "
            "(a chest radiograph is at most about 4300x4300); downsample it, or raise max_pixels "
            "if it is genuine",
        )
    if min(height, width) < MIN_SIDE:
        raise ImageReadError(
            name, f"too small to be a radiograph: {size}; the shorter side must be at least {MIN_SIDE} pixels"
        )
    aspect = max(height, width) / min(height, width)
    if aspect > MAX_ASPECT:
        raise ImageReadError(
            name,
            f"extreme aspect ratio {aspect:.0f}:1 ({size}); at most {MAX_ASPECT:.0f}:1 is accepted, "
            "so this is not a radiograph (a strip, a banner?)",
        )


def too_large_pillow(exc: Exception) -> str:
    return f"too large: declared size refused before decoding ({exc}); this looks like a decompression bomb"


def rgb_to_gray(rgb: np.ndarray, scale: float, warnings: list[str]) -> np.ndarray:
    """Luma of the first three channels, in float (R = G = B gives back the gray exactly)."""
    ch = rgb[..., :3].astype(np.float32)
    spread = float(np.abs(ch[..., 0] - ch[..., 1]).mean() + np.abs(ch[..., 1] - ch[..., 2]).mean()) / scale
    if spread > 4.0 / 255.0:
        warnings.append(
            "colour image (channels differ): converted to gray luma; is this really a radiograph?"
        )
    gray = ch[..., 0] * LUMA[0] + ch[..., 1] * LUMA[1] + ch[..., 2] * LUMA[2]
    return np.clip(gray / scale, 0.0, 1.0).astype(np.float32)


def float_gray(arr: np.ndarray, name: Any, warnings: list[str]) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ImageReadError(name, "contains NaN or infinite pixel values")
    if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        return arr.astype(np.float32, copy=True)
    return minmax(arr, name, warnings, "float values outside [0, 1]")


def minmax(arr: np.ndarray, name: Any, warnings: list[str], why: str | None) -> np.ndarray:
    """Stretch to [0, 1]; a constant image becomes 0 (with a warning), never NaN."""
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ImageReadError(name, "contains NaN or infinite pixel values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        warnings.append(f"constant image (every pixel is {lo:g}): nothing to see")
        return np.zeros(arr.shape, dtype=np.float32)
    if why:
        warnings.append(f"{why} (range {lo:g}..{hi:g}): min-max normalised to [0, 1]")
    return ((arr - lo) / (hi - lo)).astype(np.float32)
