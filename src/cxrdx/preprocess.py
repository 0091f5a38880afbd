"""Image -> model input, the one definition shared by prepare, train, predict and export.

Resizing is *letterbox*: scale the longer side to ``size`` and pad the shorter one
with black (0), centred. Chest films are not always square; a centre crop would cut
off costophrenic angles and apices, which is exactly where effusions and
pneumothoraces show. Padding keeps all anatomy, and the padding is recorded so a
heatmap maps back onto the original image at its original aspect.

An 8-bit image may be letterboxed as uint8 (value v meaning v / 255): Pillow resizes
it in its 8-bit mode, several times faster than the float resize, and the result
is within 1/255 of ``round(255 * letterbox(float image))``, which is exactly what the
training cache stores. ``Predictor`` uses this for 8-bit files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from cxrdx.errors import ConfigError

BILINEAR = Image.Resampling.BILINEAR
MIN_IMAGE_SIZE = 32  # DenseNet121 downsamples 32x; below this the last block is empty


@dataclass(frozen=True)
class Letterbox:
    """Where the source image sits inside the square model input."""

    src_height: int
    src_width: int
    size: int
    top: int
    left: int
    height: int  # resized content height inside the square
    width: int

    def unletterbox(self, square: np.ndarray) -> np.ndarray:
        """Map a (size x size) map (e.g. a heatmap) back to the source frame."""
        crop = np.ascontiguousarray(
            square[self.top : self.top + self.height, self.left : self.left + self.width], dtype=np.float32
        )
        return resize_float(crop, self.src_height, self.src_width)


def resize_float(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of a float32 2-D array."""
    if image.shape == (height, width):
        return image.astype(np.float32, copy=False)
    pil = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


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


@dataclass
class Preprocessing:
    """How a [0, 1] gray image becomes the tensor a given network expects.

    ``input = (pixel_lo + img * (pixel_hi - pixel_lo) - mean[c]) / std[c]`` per channel,
    after letterboxing to ``size`` and replicating gray to ``channels``. This covers
    our own models (range [0, 1], training-set mean/std), ImageNet-initialised
    CheXNet ports (ImageNet mean/std) and torchxrayvision ([-1024, 1024], 1 channel).
    """

    size: int = 320
    channels: int = 3
    pixel_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    resize: str = "letterbox"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pixel_range = tuple(float(v) for v in self.pixel_range)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in np.atleast_1d(self.mean))
        self.std = tuple(float(v) for v in np.atleast_1d(self.std))
        if self.size < MIN_IMAGE_SIZE:
            raise ConfigError(f"image size {self.size} is too small for DenseNet121; use at least {MIN_IMAGE_SIZE}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ConfigError(f"{name} needs 1 or {self.channels} values, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")
        if self.resize != "letterbox":
            raise ConfigError(f"unknown resize mode {self.resize!r}; only 'letterbox' is supported")

    def normalize(self, squares: np.ndarray) -> np.ndarray:
        """(N, S, S) [0, 1] float or uint8 -> (N, C, S, S) float32 network input."""
        x = np.asarray(squares)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
        lo, hi = self.pixel_range
        x = lo + x * (hi - lo)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        mean = np.broadcast_to(mean, (self.channels,))[None, :, None, None]
        std = np.broadcast_to(std, (self.channels,))[None, :, None, None]
        return (x[:, None] - mean) / std

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """One [0, 1] gray image (or uint8, v meaning v / 255) -> ((C, S, S) float32, its letterbox)."""
        square, box = letterbox(image, self.size)
        return self.normalize(square[None])[0], box

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        known = {k: data[k] for k in ("size", "channels", "pixel_range", "mean", "std", "resize", "extra") if k in data}
        return cls(**known)
