"""A patient's anatomy and the canvas it is drawn on: windows, soft shapes, smooth fields, the lungs.

Everything is in pixels of one square canvas; drawing works on small windows of it
(vectorised numpy over just the pixels a shape can touch), which is what keeps one
core at a few hundred 256-px phantoms per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Anatomy:
    """A patient's body, in fractions of the image size (x right, y down; image left = patient right)."""

    mid: float  # spine / midline x
    apex: float  # lung apices y
    dia_r: float  # right hemidiaphragm (image left) y at the costophrenic angle
    dia_l: float
    lung_w: float  # midline to lateral lung edge (half thorax width)
    medial_r: float  # midline to medial lung edge
    medial_l: float
    dome_h: float  # diaphragm dome height
    ctr: float  # cardiothoracic ratio
    heart_ry: float
    med_hw: float  # mediastinum half width
    tissue: float  # soft-tissue density
    lung_depth: float  # how much air darkens the lungs
    marking_amp: float  # vascular markings
    rib_spacing: float
    rib_curve: float
    rib_amp: float
    clav_y: float
    clav_tilt: float
    body_rx: float
    body_ry: float
    body_cy: float
    gastric_bubble: float  # > 0.5: draw a gastric air bubble

    def jitter(self, rng: np.random.Generator) -> Anatomy:
        """The same patient on another day: every parameter moves a little."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            lo, hi = _ANATOMY_RANGES[f.name]
            out[f.name] = float(np.clip(value + rng.normal(0.0, 0.04 * (hi - lo)), lo, hi))
        return Anatomy(**out)


_ANATOMY_RANGES: dict[str, tuple[float, float]] = {
    "mid": (0.485, 0.515),
    "apex": (0.10, 0.15),
    "dia_r": (0.70, 0.76),
    "dia_l": (0.72, 0.79),
    "lung_w": (0.34, 0.39),
    "medial_r": (0.05, 0.07),
    "medial_l": (0.06, 0.08),
    "dome_h": (0.04, 0.07),
    "ctr": (0.36, 0.45),
    "heart_ry": (0.15, 0.19),
    "med_hw": (0.055, 0.07),
    "tissue": (0.48, 0.55),
    "lung_depth": (0.27, 0.33),
    "marking_amp": (0.05, 0.09),
    "rib_spacing": (0.058, 0.07),
    "rib_curve": (0.22, 0.32),
    "rib_amp": (0.05, 0.075),
    "clav_y": (0.10, 0.14),
    "clav_tilt": (0.02, 0.05),
    "body_rx": (0.47, 0.53),
    "body_ry": (0.66, 0.74),
    "body_cy": (0.58, 0.64),
    "gastric_bubble": (0.0, 1.0),
}


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A new patient's anatomy, every parameter uniform in its normal range."""
    return Anatomy(**{name: float(rng.uniform(lo, hi)) for name, (lo, hi) in _ANATOMY_RANGES.items()})


_ARANGE: dict[int, np.ndarray] = {}


def _arange(size: int) -> np.ndarray:
    if size not in _ARANGE:
        _ARANGE[size] = np.arange(size, dtype=np.float32)
    return _ARANGE[size]


@dataclass
class Window:
    """A rectangular window of the canvas with its pixel coordinates (row x, column y)."""

    sl: tuple[slice, slice]
    x: np.ndarray  # (1, w)
    y: np.ndarray  # (h, 1)
    x0: int
    y0: int


class Canvas:
    def __init__(self, size: int) -> None:
        self.size = size
        self.d = np.zeros((size, size), dtype=np.float32)  # density, bright = dense
        self.soft = max(0.6, size / 256)  # edge width in pixels

    def win(self, x0: float, y0: float, x1: float, y1: float) -> Window | None:
        s = self.size
        j0, j1 = max(0, int(math.floor(x0))), min(s, int(math.ceil(x1)) + 1)
        i0, i1 = max(0, int(math.floor(y0))), min(s, int(math.ceil(y1)) + 1)
        if j1 <= j0 or i1 <= i0:
            return None
        ar = _arange(s)
        return Window((slice(i0, i1), slice(j0, j1)), ar[j0:j1][None, :], ar[i0:i1][:, None], j0, i0)

    def full(self) -> Window:
        w = self.win(0, 0, self.size, self.size)
        assert w is not None
        return w


def ellipse(w: Window, cx, cy, rx, ry, soft, angle=0.0) -> np.ndarray:
    """Soft-edged filled ellipse (1 inside, 0 outside, ~`soft` px ramp)."""
    dx, dy = w.x - cx, w.y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = dx * c + dy * s, dy * c - dx * s
    r = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    return np.clip((1.0 - r) * (min(rx, ry) / soft) + 0.5, 0.0, 1.0)


def blob(w: Window, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
    """Smooth dome profile (1 at centre, 0 at the ellipse edge): round opacities."""
    dx, dy = w.x - cx, w.y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = dx * c + dy * s, dy * c - dx * s
    r2 = (dx / rx) ** 2 + (dy / ry) ** 2
    return np.clip(1.0 - r2, 0.0, 1.0) ** 0.6


def smooth_field(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field (~unit variance) with features about `cell` px across."""
    gh = max(2, math.ceil(h / cell) + 1)
    gw = max(2, math.ceil(w / cell) + 1)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC))


def box_of(mask: np.ndarray, w: Window, frac: float = 0.3) -> tuple[int, int, int, int] | None:
    """Bounding box (x, y, w, h) of where `mask` reaches `frac` of its peak."""
    peak = float(mask.max()) if mask.size else 0.0
    if peak <= 0:
        return None
    hit = mask >= frac * peak
    rows = np.flatnonzero(hit.any(axis=1))
    cols = np.flatnonzero(hit.any(axis=0))
    return (
        w.x0 + int(cols[0]),
        w.y0 + int(rows[0]),
        int(cols[-1] - cols[0] + 1),
        int(rows[-1] - rows[0] + 1),
    )


def blend(cv: Canvas, w: Window, m: np.ndarray, target: float) -> None:
    """Replace air by fluid/tissue: move density toward `target` by mask `m`."""
    region = cv.d[w.sl]
    region += m * (target - region)


@dataclass(frozen=True)
class Lung:
    """One lung field: the top of an ellipse cut from below by a diaphragm dome."""

    cx: float
    cy: float
    rx: float
    ry: float
    dia: float  # y of the costophrenic angle
    dome_cx: float
    dome_rx: float
    dome_h: float
    sign: int  # -1: image left (patient right), +1: image right
    apex: float

    @staticmethod
    def build(mid, medial, lateral, apex, dia, dome_h, sign, size) -> Lung:
        cx = mid + sign * (medial + lateral) / 2
        rx = (lateral - medial) / 2
        cy = dia - 0.03 * size
        return Lung(cx, cy, rx, cy - apex, dia, cx - sign * 0.1 * rx, 1.15 * rx, dome_h, sign, apex)

    @property
    def lateral(self) -> float:
        return self.cx + self.sign * self.rx

    @property
    def medial(self) -> float:
        return self.cx - self.sign * self.rx

    def dome(self, x):
        return self.dia - self.dome_h * (1.0 - ((x - self.dome_cx) / self.dome_rx) ** 2)

    def bounds(self) -> tuple[float, float, float, float]:
        return self.cx - self.rx, self.apex, self.cx + self.rx, self.dia

    def mask(self, w: Window, soft: float) -> np.ndarray:
        dome = self.dome(w.x)
        return ellipse(w, self.cx, self.cy, self.rx, self.ry, soft) * np.clip((dome - w.y) / soft + 0.5, 0, 1)

    def shrunk(self, lateral_frac: float, apex_frac: float) -> Lung:
        """The lung pulled away from the lateral wall and apex (collapse, or an inner contour)."""
        new_lateral = self.lateral - self.sign * lateral_frac * 2 * self.rx
        cx = (new_lateral + self.medial) / 2
        rx = abs(new_lateral - self.medial) / 2
        apex = self.apex + apex_frac * (self.dia - self.apex)
        return replace(self, cx=cx, rx=rx, ry=self.cy - apex, apex=apex)

    def point(self, rng, r, v_range=(0.2, 0.85), heart=None) -> tuple[float, float]:
        """A point inside the lung at least ~r from its edge and off the heart."""
        for _ in range(60):
            v = rng.uniform(*v_range)
            y = self.apex + v * (self.dia - self.apex)
            hw = self.rx * math.sqrt(max(0.0, 1 - ((y - self.cy) / self.ry) ** 2)) - r * 1.2
            if hw <= 0:
                continue
            x = self.cx + rng.uniform(-1, 1) * hw
            if y > self.dome(x) - r * 1.2:
                continue
            if heart is not None:
                hcx, hcy, hrx, hry = heart
                if ((x - hcx) / (hrx + r)) ** 2 + ((y - hcy) / (hry + r)) ** 2 < 1:
                    continue
            return float(x), float(y)
        return float(self.cx), float(self.apex + 0.45 * (self.dia - self.apex))

    def hilum(self, size: int) -> tuple[float, float]:
        return self.medial + self.sign * 0.05 * size, self.apex + 0.42 * (self.dia - self.apex)
