"""The resize kernels a checkpoint's recipe can name (``Preprocessing.resize``), each a publisher's own.

- ``pil``: Pillow's bilinear filter, which widens its support when downsampling
  (antialiased), in float (mode "F"). cxrdx's own training cache and inference.
- ``pil8``: the same filter in Pillow's 8-bit arithmetic (mode "L"): what
  torchvision's ``Resize`` does to the 8-bit PIL images CheXNet's test script feeds it.
- ``skimage``: ``skimage.transform.resize(img, shape, mode="constant", preserve_range=True)``
  as torchxrayvision's ``XRayResizer`` calls it on float32: when downsampling, a Gaussian
  pre-filter with sigma = max(0, (factor - 1) / 2) per axis (scipy's kernel: radius
  int(4 sigma + 0.5), normalised, values outside the image = ``cval``), then linear
  interpolation at the pixel centres ((i + 0.5) * factor - 0.5, scipy's ``grid_mode``),
  outside samples = ``cval``, then the result clipped to the input's range. The whole
  chain is linear per axis, so it is one sparse (out x in) matrix per axis, applied
  with scipy's sparse product: a few ms for a 1024 px film, where skimage's Gaussian
  over the whole film costs ~10x that. tests/imaging/test_resize.py checks it against
  scikit-image itself (not a runtime dependency).
- ``nearest``: Pillow's nearest neighbour (Keras ``load_img``'s default interpolation).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

KERNELS = ("pil", "pil8", "skimage", "nearest")
_GAUSS_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default


def resize(image: np.ndarray, height: int, width: int, kernel: str, cval: float = 0.0) -> np.ndarray:
    """A 2-D image resized to (height, width) with ``kernel``; float32 out (uint8 for ``pil8``).

    ``cval``: the value outside the image for ``skimage`` (the one that normalises to 0, since
    torchxrayvision resizes after normalising).
    """
    if kernel == "pil8":
        u8 = image if image.dtype == np.uint8 else _to_uint8(image)
        if u8.shape == (height, width):
            return u8
        return np.asarray(Image.fromarray(u8, mode="L").resize((width, height), Image.Resampling.BILINEAR))
    x = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32, copy=False)
    if kernel == "skimage":
        return skimage_resize(x, height, width, cval)
    if x.shape == (height, width):
        return x
    mode = {"pil": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}.get(kernel)
    if mode is None:
        raise ValueError(f"unknown resize kernel {kernel!r}; known: {', '.join(KERNELS)}")
    return np.asarray(Image.fromarray(x, mode="F").resize((width, height), mode), dtype=np.float32)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def skimage_resize(image: np.ndarray, height: int, width: int, cval: float = 0.0) -> np.ndarray:
    """scikit-image's anti-aliased linear resize (mode "constant", ``cval``, clipped), float32."""
    x = np.asarray(image, dtype=np.float32)
    h, w = x.shape
    rows, r_edge = _axis_matrix(h, height)
    cols, c_edge = _axis_matrix(w, width)
    # out = R x C^T + cval * (what the outside contributes): the outside is constant cval
    out = np.asarray((cols @ np.asarray(rows @ x).T).T)
    if cval:
        r_in, c_in = 1.0 - r_edge, 1.0 - c_edge  # weight each output puts inside the image, per axis
        out += cval * (1.0 - np.outer(r_in, c_in))
    lo, hi = float(x.min()), float(x.max())
    out32 = out.astype(np.float32)
    if lo <= cval <= hi or not (out32.min() <= cval <= out32.max()):
        return np.clip(out32, lo, hi)
    keep = out32 == np.float32(cval)  # skimage keeps cval where it widened the range
    clipped = np.clip(out32, lo, hi)
    clipped[keep] = np.float32(cval)
    return clipped


@functools.lru_cache(maxsize=64)
def _axis_matrix(n_in: int, n_out: int):  # -> (scipy.sparse csr (n_out, n_in), (n_out,) outside weight)
    """One axis of the resize: the Gaussian (when shrinking) then linear interpolation, as a matrix.

    Rows sum to 1 minus the weight that falls outside the image (returned separately, for cval).
    """
    from scipy import sparse

    factor = n_in / n_out
    sigma = max(0.0, (factor - 1.0) / 2.0)
    radius = int(_GAUSS_TRUNCATE * sigma + 0.5) if sigma > 1e-15 else 0
    if radius:
        t = np.arange(-radius, radius + 1, dtype=np.float64)
        gauss = np.exp(-0.5 / sigma**2 * t**2)
        gauss /= gauss.sum()
    else:
        gauss = np.ones(1)
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * factor - 0.5
    lo = np.floor(pos)
    frac = pos - lo
    taps = 2 * (2 * radius + 1)  # two interpolation samples, each a Gaussian of 2r + 1 taps (summed)
    cols = np.empty((n_out, taps), dtype=np.int64)
    vals = np.zeros((n_out, taps), dtype=np.float64)
    extra = np.zeros(n_out)  # interpolation weight on samples outside the image (cval)
    for k, (offset, wt) in enumerate(((0, 1.0 - frac), (1, frac))):
        centre = lo.astype(np.int64) + offset
        # a sample outside the image is cval itself (scipy's grid-constant): none of its taps are read
        sample_in = ((centre >= 0) & (centre < n_in)).astype(np.float64)
        for j, g in enumerate(gauss):
            cols[:, k * (2 * radius + 1) + j] = np.clip(centre, 0, n_in - 1) + j - radius
            vals[:, k * (2 * radius + 1) + j] = wt * g * sample_in
        extra += wt * (1.0 - sample_in)
    # Gaussian taps that fall outside the image read cval (the filter's constant mode)
    inside = (cols >= 0) & (cols < n_in)
    outside = np.where(inside, 0.0, vals).sum(1) + extra
    rows = np.repeat(np.arange(n_out), taps)
    keep = inside.ravel()
    matrix = sparse.csr_matrix(
        (vals.ravel()[keep], (rows[keep], cols.ravel()[keep])), shape=(n_out, n_in), dtype=np.float32
    )
    return matrix, outside
