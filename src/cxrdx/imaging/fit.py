"""How a film is fitted into the network's square, per recipe (``Preprocessing.fit``).

- ``letterbox``: the longer side to ``size``, the shorter padded with black, centred (cxrdx's
  own models: no anatomy is cut off).
- ``center_crop``: the centred square of the shorter side's length (start = n // 2 - side // 2),
  then resized to ``size``: torchxrayvision's ``XRayCenterCrop`` + ``XRayResizer``.
- ``resize_crop``: the shorter side to ``resize_to`` (the longer one to int(resize_to * long /
  short)), then ``size`` crops: torchvision's ``Resize`` + ``CenterCrop``, or ``TenCrop``
  (four corners and the centre, then the same of the mirrored image) as CheXNet's test script.
- ``stretch``: both sides to ``size`` whatever the aspect (Keras ``load_img(target_size=...)``).

Each returns the squares (one, or ten for ten-crop with the centre crop first) and a
``Letterbox`` saying where the whole source sits in the (first) square, so heatmaps map back.
"""

from __future__ import annotations

import numpy as np

from cxrdx.imaging.letterbox import Letterbox
from cxrdx.imaging.resize import resize

FITS = ("letterbox", "center_crop", "resize_crop", "stretch")


def fit_square(
    image: np.ndarray,
    fit: str,
    size: int,
    kernel: str,
    cval: float = 0.0,
    resize_to: int | None = None,
    crops: int = 1,
) -> tuple[list[np.ndarray], Letterbox]:
    """(squares, where the source sits in the first): see the module docstring for each ``fit``."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {image.shape}")
    h, w = image.shape
    if fit == "letterbox":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (size - nh) // 2, (size - nw) // 2
        content = resize(image, nh, nw, kernel, cval)
        out = np.zeros((size, size), dtype=content.dtype)
        out[top : top + nh, left : left + nw] = content
        return [out], Letterbox(h, w, size, top, left, nh, nw)
    if fit == "center_crop":
        side = min(h, w)
        y0, x0 = h // 2 - side // 2, w // 2 - side // 2
        out = resize(image[y0 : y0 + side, x0 : x0 + side], size, size, kernel, cval)
        scale = size / side
        box = Letterbox(
            h, w, size, -round(y0 * scale), -round(x0 * scale), round(h * scale), round(w * scale)
        )
        return [out], box
    if fit == "stretch":
        return [resize(image, size, size, kernel, cval)], Letterbox(h, w, size, 0, 0, size, size)
    if fit == "resize_crop":
        short = resize_to or size
        if h <= w:
            nh, nw = short, int(short * w / h)
        else:
            nh, nw = int(short * h / w), short
        if min(nh, nw) < size:
            raise ValueError(f"resize_to {short} is smaller than the crop {size}")
        big = resize(image, nh, nw, kernel, cval)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        box = Letterbox(h, w, size, -top, -left, nh, nw)
        centre = big[top : top + size, left : left + size]
        if crops == 1:
            return [np.ascontiguousarray(centre)], box
        return _five(big, size) + _five(big[:, ::-1], size), box  # TenCrop: five, then five of the mirror
    raise ValueError(f"unknown fit {fit!r}; known: {', '.join(FITS)}")


def _five(big: np.ndarray, size: int) -> list[np.ndarray]:
    """The centre crop (torchvision's rounding) and the four corner crops."""
    nh, nw = big.shape
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    spots = [(top, left), (0, 0), (0, nw - size), (nh - size, 0), (nh - size, nw - size)]
    return [np.ascontiguousarray(big[y : y + size, x : x + size]) for y, x in spots]
