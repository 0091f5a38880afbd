"""A heatmap's post-processing, in numpy alone (no torch: the ONNX path makes heatmaps without it).

``normalize_map`` (min-max to [0, 1]; a flat or non-finite map becomes zeros, never NaN),
``to_source`` (a map on the (S, S) model input -> the source image's frame, normalised over the
image, not the letterbox padding; ``GridMaps``: several findings' maps before that step), ``upsample_bilinear`` (PyTorch's bilinear ``interpolate``, what
Grad-CAM upsamples its cells with) and ``cam_squares`` (class activation maps -> Grad-CAM's maps:
ReLU, upsampling, normalisation; cxrdx.explain.cam).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrdx.imaging.letterbox import Letterbox

CAM_STRIDE = 32  # DenseNet121 input pixels per cell of the last dense block


def normalize_map(cam: np.ndarray) -> np.ndarray:
    """Min-max scale one map to [0, 1] (a new array); non-finite values count as 0, a flat map becomes
    zeros (never NaN). Two passes over a finite map and one in place: a 1024 px map is ~4 MB a pass."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.size == 0:
        return cam.copy()
    lo, hi = float(cam.min()), float(cam.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or +-inf somewhere: they count as 0
        cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(cam.min()), float(cam.max())
    if not hi - lo > 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(cam, dtype=np.float32)
    out = np.subtract(cam, lo, dtype=np.float32)
    return np.divide(out, hi - lo, out=out)


def to_source(square: np.ndarray, box: Letterbox) -> np.ndarray:
    """A map on the (S, S) model input -> the source image's frame, normalised over the image only
    (the letterbox padding is cut off first): what a heatmap shows and the pointing game scores."""
    return normalize_map(box.unletterbox(square))


@dataclass(frozen=True)
class GridMaps:
    """Several findings' maps of one image on the (S, S) model input, and where the image sits in it:
    what ``to_source`` turns into source-grid heatmaps. For a 1024 px film they are 20x smaller at 224 px
    (10x at 320), so the DICOM node hands these to the worker process that builds its results."""

    squares: dict[str, np.ndarray]  # finding -> (S, S) map in [0, 1]
    box: Letterbox | None  # None: no maps

    def to_source(self) -> dict[str, np.ndarray]:
        return {name: to_source(square, self.box) for name, square in self.squares.items()}


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D linear interpolation with half-pixel centres, edges clamped: output i reads
    ``(1 - frac) * in[i0] + frac * in[i1]`` (PyTorch's ``align_corners=False``)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), src - i0


def upsample_bilinear(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(..., h, w) -> (..., *size), float64: PyTorch's ``interpolate(mode="bilinear", align_corners=False)``
    (what Grad-CAM upsamples with, ``cxrdx.explain.gradcam.upsample_cams``), in numpy.

    Gathers and weighted sums, no matrix product: a small BLAS call with threads fighting over
    a busy CPU took 50-100 ms here, this takes well under one.
    """
    out = np.asarray(maps, dtype=np.float64)
    for axis, n_out in ((-2, size[0]), (-1, size[1])):
        i0, i1, frac = _linear_taps(out.shape[axis], int(n_out))
        shape = [1] * out.ndim
        shape[axis] = len(frac)
        frac = frac.reshape(shape)
        out = np.take(out, i0, axis=axis) * (1.0 - frac) + np.take(out, i1, axis=axis) * frac
    return out


def cam_squares(cells: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(N, L, h, w) maps ``M`` -> (N, L, *size) heatmaps in [0, 1]: ReLU, bilinear upsampling, min-max.

    The post-processing of ``GradCam.many``, in numpy (the ONNX path needs no torch).
    """
    up = upsample_bilinear(np.maximum(np.asarray(cells, dtype=np.float64), 0.0), size)
    out = np.empty(up.shape, np.float32)
    for idx in np.ndindex(*up.shape[:2]):
        out[idx] = normalize_map(up[idx])
    return out
