"""Letterbox resizing: fit a gray image into the square model input without cropping.

(Other publishers crop or stretch: ``Preprocessing`` follows the checkpoint's recipe and
records where the source sits in a ``Letterbox`` all the same, so heatmaps map back.)

Scale the longer side to ``size`` and pad the shorter one with black (0), centred.
Chest films are not always square; a centre crop would cut off costophrenic angles
and apices, which is exactly where effusions and pneumothoraces show. Padding keeps
all anatomy, and the padding is recorded so a heatmap maps back onto the original
image at its original aspect.

An 8-bit image may be letterboxed as uint8 (value v meaning v / 255): Pillow resizes
it in its 8-bit mode, and the result is within 1/255 of ``round(255 * letterbox(float
image))``, which is what the training cache stores. Only checkpoints that predate the
recorded recipe (``Preprocessing.resize == "legacy"``) are fed this way; everything else
goes through ``Preprocessing.square``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

BILINEAR = Image.Resampling.BILINEAR
MIN_IMAGE_SIZE = 32  # DenseNet121 downsamples 32x; below this the last block is empty


@dataclass(frozen=True)
class Letterbox:
    """Where the source image sits inside the square model input."""

    src_height: int
    src_width: int
    size: int
    top: int  # negative for a crop: the resized source starts above the square
    left: int
    height: int  # the whole source's height once resized (inside the square for a letterbox)
    width: int

    def unletterbox(self, square: np.ndarray) -> np.ndarray:
        """Map a (size x size) map (e.g. a heatmap) back to the source frame.

        A crop (``top``/``left`` negative, content larger than the square) leaves what the network
        never saw at 0.
        """
        inside = self.top >= 0 and self.left >= 0
        if inside and self.top + self.height <= self.size and self.left + self.width <= self.size:
            content = square[self.top : self.top + self.height, self.left : self.left + self.width]
        else:
            content = np.zeros((self.height, self.width), dtype=np.float32)
            y0, y1 = max(0, self.top), min(self.size, self.top + self.height)
            x0, x1 = max(0, self.left), min(self.size, self.left + self.width)
            content[y0 - self.top : y1 - self.top, x0 - self.left : x1 - self.left] = square[y0:y1, x0:x1]
        crop = np.ascontiguousarray(content, dtype=np.float32)
        return resize_float(crop, self.src_height, self.src_width)


def resize_float(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of a float32 2-D array."""
    if image.shape == (height, width):
        return image.astype(np.float32, copy=False)
    pil = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((width, height), BILINEAR), dtype=np.float32)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Fit a 2-D gray image (float, any range) into a ``size`` square, padding with 0.

    A uint8 image gives a uint8 square (8-bit resize; see the module docstring).
    """
    if image.ndim != 2:
        raise ValueError(f"letterbox expects a 2-D gray image, got shape {image.shape}")
    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    if image.dtype == np.uint8:
        out = np.zeros((size, size), dtype=np.uint8)
        content = image if (nh, nw) == (h, w) else Image.fromarray(image, mode="L").resize((nw, nh), BILINEAR)
        out[top : top + nh, left : left + nw] = np.asarray(content, dtype=np.uint8)
        return out, Letterbox(h, w, size, top, left, nh, nw)
    out = np.zeros((size, size), dtype=np.float32)
    out[top : top + nh, left : left + nw] = resize_float(image, nh, nw)
    return out, Letterbox(h, w, size, top, left, nh, nw)
