"""Synthetic frontal chest radiograph phantoms: the built-in dataset with known truth.

Real labelled chest films cannot ship with the project, yet every stage (training,
evaluation, Grad-CAM localisation, leakage checks) needs data whose labels and
lesion boxes are *exactly* known. A phantom is drawn from an anatomy (body outline,
dark lung fields, mediastinum, heart, diaphragm domes, spine, clavicles, ribs) plus
lesions whose geometry carries the finding (a cardiothoracic ratio above 0.5, a
meniscus at a costophrenic angle, a lung edge with no markings beyond it, ...).
Labels are what was drawn, and every drawn lesion has a box where it was drawn.

Drawing is vectorised numpy on small windows, so one core makes a few hundred
256-px phantoms per second. Each image has its own seed (``[seed, kind, index]``),
so the bytes do not depend on ``--workers``. A patient's follow-ups share one
anatomy with small jitter and, often, the same chronic findings, so a split that
leaks a patient across train and test is rewarded as it would be with real data.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

from cxrdx.errors import ConfigError
from cxrdx.labels import FINDINGS, NO_FINDING, canonical, canonical_list

# Prevalence in the NIH table (fractions of 112,120 images), for reference and scaling.
NIH_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.1031,
    "Cardiomegaly": 0.0248,
    "Consolidation": 0.0416,
    "Edema": 0.0205,
    "Effusion": 0.1188,
    "Emphysema": 0.0224,
    "Fibrosis": 0.0150,
    "Hernia": 0.0020,
    "Infiltration": 0.1774,
    "Mass": 0.0516,
    "Nodule": 0.0565,
    "Pleural_Thickening": 0.0302,
    "Pneumonia": 0.0128,
    "Pneumothorax": 0.0473,
}

# NIH's ordering of frequencies, compressed so the rarest finding still has ~4%
# positives (a 1,000-image set keeps ~40 of each) and ~45% of images are normal.
DEFAULT_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.075,
    "Cardiomegaly": 0.04,
    "Consolidation": 0.045,
    "Edema": 0.04,
    "Effusion": 0.085,
    "Emphysema": 0.04,
    "Fibrosis": 0.04,
    "Hernia": 0.04,
    "Infiltration": 0.11,
    "Mass": 0.05,
    "Nodule": 0.055,
    "Pleural_Thickening": 0.04,
    "Pneumonia": 0.04,
    "Pneumothorax": 0.05,
}

# (given, then): when `given` is drawn, `then` is added with this probability.
# Mirrors NIH's common pairs; it raises the marginal prevalence of `then` a little.
DEFAULT_CO_OCCURRENCE: dict[tuple[str, str], float] = {
    ("Effusion", "Atelectasis"): 0.15,
    ("Edema", "Cardiomegaly"): 0.2,
    ("Pneumonia", "Infiltration"): 0.15,
    ("Mass", "Nodule"): 0.1,
}

# Findings that mostly persist across a patient's follow-ups (the rest are redrawn).
CHRONIC = frozenset(
    {"Cardiomegaly", "Emphysema", "Fibrosis", "Hernia", "Mass", "Nodule", "Pleural_Thickening"}
)


@dataclass
class PhantomConfig:
    """What a phantom dataset contains (prevalence, co-occurrence, patients)."""

    prevalence: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    prevalence_scale: float = 1.0
    co_occurrence: dict[tuple[str, str], float] = field(default_factory=lambda: dict(DEFAULT_CO_OCCURRENCE))
    # P(1, 2, 3, 4 images) for a patient.
    followups: tuple[float, ...] = (0.45, 0.25, 0.17, 0.13)
    # Chance that a follow-up keeps the patient's state of a chronic finding.
    persistence: float = 0.8
    # Fraction of lesions drawn small and faint.
    subtle_fraction: float = 0.2
    # Fraction of images labelled AP in the table (metadata only; drawn the same).
    ap_fraction: float = 0.2

    def __post_init__(self) -> None:
        try:
            prevalence = {canonical(k): float(v) for k, v in self.prevalence.items()}
            pairs = {(canonical(a), canonical(b)): float(p) for (a, b), p in self.co_occurrence.items()}
        except Exception as exc:
            raise ConfigError(f"PhantomConfig: {exc}") from exc
        if not self.prevalence_scale > 0:
            raise ConfigError(f"PhantomConfig: prevalence_scale must be > 0, got {self.prevalence_scale}")
        bad = {k: v for k, v in prevalence.items() if not 0.0 <= v <= 1.0}
        bad |= {f"{a}->{b}": p for (a, b), p in pairs.items() if not 0.0 <= p <= 1.0}
        if bad:
            raise ConfigError(f"PhantomConfig: probabilities must lie in [0, 1]; got {bad}")
        if not self.followups or any(p < 0 for p in self.followups) or sum(self.followups) <= 0:
            raise ConfigError(f"PhantomConfig: followups must be non-negative weights, got {self.followups}")
        for name in ("persistence", "subtle_fraction", "ap_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"PhantomConfig: {name} must lie in [0, 1], got {value}")
        self.prevalence = prevalence
        self.co_occurrence = pairs

    def effective_prevalence(self) -> dict[str, float]:
        """Per-finding draw probability after ``prevalence_scale`` (before co-occurrence)."""
        return {f: min(0.95, self.prevalence.get(f, 0.0) * self.prevalence_scale) for f in FINDINGS}


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


# --------------------------------------------------------------------------- drawing


_ARANGE: dict[int, np.ndarray] = {}


def _arange(size: int) -> np.ndarray:
    if size not in _ARANGE:
        _ARANGE[size] = np.arange(size, dtype=np.float32)
    return _ARANGE[size]


@dataclass
class _Win:
    """A rectangular window of the canvas with its pixel coordinates (row x, column y)."""

    sl: tuple[slice, slice]
    x: np.ndarray  # (1, w)
    y: np.ndarray  # (h, 1)
    x0: int
    y0: int


class _Canvas:
    def __init__(self, size: int) -> None:
        self.size = size
        self.d = np.zeros((size, size), dtype=np.float32)  # density, bright = dense
        self.soft = max(0.6, size / 256)  # edge width in pixels

    def win(self, x0: float, y0: float, x1: float, y1: float) -> _Win | None:
        s = self.size
        j0, j1 = max(0, int(math.floor(x0))), min(s, int(math.ceil(x1)) + 1)
        i0, i1 = max(0, int(math.floor(y0))), min(s, int(math.ceil(y1)) + 1)
        if j1 <= j0 or i1 <= i0:
            return None
        ar = _arange(s)
        return _Win((slice(i0, i1), slice(j0, j1)), ar[j0:j1][None, :], ar[i0:i1][:, None], j0, i0)

    def full(self) -> _Win:
        w = self.win(0, 0, self.size, self.size)
        assert w is not None
        return w


def _ellipse(w: _Win, cx, cy, rx, ry, soft, angle=0.0) -> np.ndarray:
    """Soft-edged filled ellipse (1 inside, 0 outside, ~`soft` px ramp)."""
    dx, dy = w.x - cx, w.y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = dx * c + dy * s, dy * c - dx * s
    r = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    return np.clip((1.0 - r) * (min(rx, ry) / soft) + 0.5, 0.0, 1.0)


def _blob(w: _Win, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
    """Smooth dome profile (1 at centre, 0 at the ellipse edge): round opacities."""
    dx, dy = w.x - cx, w.y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = dx * c + dy * s, dy * c - dx * s
    r2 = (dx / rx) ** 2 + (dy / ry) ** 2
    return np.clip(1.0 - r2, 0.0, 1.0) ** 0.6


def _field(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field (~unit variance) with features about `cell` px across."""
    gh = max(2, math.ceil(h / cell) + 1)
    gw = max(2, math.ceil(w / cell) + 1)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC))


def _box_of(mask: np.ndarray, w: _Win, frac: float = 0.3) -> tuple[int, int, int, int] | None:
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


def _blend(cv: _Canvas, w: _Win, m: np.ndarray, target: float) -> None:
    """Replace air by fluid/tissue: move density toward `target` by mask `m`."""
    region = cv.d[w.sl]
    region += m * (target - region)


@dataclass(frozen=True)
class _Lung:
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
    def build(mid, medial, lateral, apex, dia, dome_h, sign, size) -> _Lung:
        cx = mid + sign * (medial + lateral) / 2
        rx = (lateral - medial) / 2
        cy = dia - 0.03 * size
        return _Lung(cx, cy, rx, cy - apex, dia, cx - sign * 0.1 * rx, 1.15 * rx, dome_h, sign, apex)

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

    def mask(self, w: _Win, soft: float) -> np.ndarray:
        dome = self.dome(w.x)
        return _ellipse(w, self.cx, self.cy, self.rx, self.ry, soft) * np.clip(
            (dome - w.y) / soft + 0.5, 0, 1
        )

    def shrunk(self, lateral_frac: float, apex_frac: float) -> _Lung:
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


def _contrast(rng: np.random.Generator, subtle: bool, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi) * (rng.uniform(0.55, 0.75) if subtle else 1.0))


def make_phantom(
    rng: np.random.Generator,
    size: int,
    findings,
    anatomy: Anatomy | None = None,
    subtle_fraction: float = 0.2,
) -> tuple[np.ndarray, list[tuple[str, int, int, int, int]]]:
    """Draw one frontal chest phantom with the given findings.

    Returns the (size, size) uint8 image (bright = dense) and one or more boxes
    ``(finding, x, y, w, h)`` in pixels for every finding drawn.
    """
    found = set(canonical_list(findings))
    a = anatomy if anatomy is not None else sample_anatomy(rng)
    # Separate streams for textures, lesions and exposure: the same seed with and
    # without a finding gives the same film except for the lesion itself.
    tex_rng, rng, exp_rng = rng.spawn(3)
    s = float(size)
    cv = _Canvas(size)
    soft = cv.soft
    boxes: list[tuple[str, int, int, int, int]] = []

    def subtle() -> bool:
        return bool(rng.random() < subtle_fraction)

    # ---- anatomy changes that findings cause (before anything is drawn)
    mid = a.mid * s
    apex, dia_r, dia_l = a.apex * s, a.dia_r * s, a.dia_l * s
    lung_w, dome_h, lung_depth, marking = a.lung_w * s, a.dome_h * s, a.lung_depth, a.marking_amp
    ctr = a.ctr
    if "Emphysema" in found:  # hyperinflated, hyperlucent, flat domes, sparse markings
        k = rng.uniform(0.6, 1.0) if not subtle() else rng.uniform(0.35, 0.5)
        apex -= 0.025 * s * k
        dia_r += 0.06 * s * k
        dia_l += 0.06 * s * k
        lung_w = min(lung_w * (1 + 0.05 * k), 0.41 * s)
        dome_h *= 1 - 0.7 * k
        lung_depth += 0.09 * k
        marking *= 1 - 0.6 * k
        if "Cardiomegaly" not in found:
            ctr = min(ctr, 0.40) * (1 - 0.12 * k)
    if "Cardiomegaly" in found:
        ctr = rng.uniform(0.51, 0.54) if subtle() else rng.uniform(0.54, 0.65)
    atel_side = int(rng.choice([-1, 1])) if "Atelectasis" in found else 0
    atel_wedge = bool(rng.random() < 0.5) if atel_side else False
    if atel_wedge:  # lobar collapse pulls the hemidiaphragm up
        lift = rng.uniform(0.01, 0.025) * s
        if atel_side < 0:
            dia_r -= lift
        else:
            dia_l -= lift

    lungs = {
        -1: _Lung.build(mid, a.medial_r * s, lung_w, apex, dia_r, dome_h, -1, size),
        1: _Lung.build(mid, a.medial_l * s, lung_w, apex, dia_l, dome_h, 1, size),
    }
    # The heart is a tilted ellipse whose horizontal extent is ctr x thorax width.
    half_w = ctr * lung_w
    heart_ry = a.heart_ry * s
    tilt = math.radians(18)
    heart_rx = math.sqrt(max(half_w**2 - (heart_ry * math.sin(tilt)) ** 2, (0.5 * half_w) ** 2)) / math.cos(
        tilt
    )
    heart_cx = mid + 0.2 * half_w
    heart_cy = dia_l - 0.35 * heart_ry
    heart = (heart_cx, heart_cy, half_w, heart_ry)

    # ---- pneumothorax geometry (it changes how the lung itself is drawn)
    ptx_side, ptx_lung = 0, None
    if "Pneumothorax" in found:
        ptx_side = int(rng.choice([-1, 1]))
        f = rng.uniform(0.08, 0.12) if subtle() else rng.uniform(0.14, 0.3)
        ptx_lung = lungs[ptx_side].shrunk(f, f * rng.uniform(0.5, 0.9))

    # ---- body and soft tissue
    body = _ellipse(cv.full(), mid, a.body_cy * s, a.body_rx * s, a.body_ry * s, soft * 3)
    np.multiply(body, a.tissue, out=cv.d)
    w = cv.win(mid - 0.12 * s, 0, mid + 0.12 * s, 0.2 * s)
    if w is not None:
        neck = _ellipse(w, mid, 0.0, 0.11 * s, 0.2 * s, soft * 2)
        np.maximum(cv.d[w.sl], a.tissue * 0.95 * neck, out=cv.d[w.sl])

    # ---- lungs with vascular markings fading from the hila
    for side, lung in lungs.items():
        x0, y0, x1, y1 = lung.bounds()
        w = cv.win(x0 - 2, y0 - 2, x1 + 2, y1 + 2)
        if w is None:
            continue
        m = lung.mask(w, soft)
        grad = 1.0 + 0.12 * (lung.dia - w.y) / (lung.dia - lung.apex)  # upper zones a bit darker
        cv.d[w.sl] -= lung_depth * m * grad
        hx, hy = lung.hilum(size)
        near = np.exp(-(((w.x - hx) ** 2 + (w.y - hy) ** 2) / (2 * (0.16 * s) ** 2)))
        mk = m
        if side == ptx_side and ptx_lung is not None:
            inner = ptx_lung.mask(w, soft)
            rim = m * (1.0 - inner)
            mk = inner
            cv.d[w.sl] -= 0.1 * rim  # no lung: more lucent
            edge = np.clip(1.0 - np.abs(inner - 0.5) * 2.2, 0.0, 1.0) * m  # visceral pleural line
            cv.d[w.sl] += 0.12 * edge
            box = _box_of(rim, w, 0.5)
            if box:
                boxes.append(("Pneumothorax", *box))
        vessels = np.abs(_field(tex_rng, w.y.shape[0], w.x.shape[1], s / 22))
        vessels = np.clip(1.0 - vessels * (1 / 0.35), 0.0, 1.0)
        cv.d[w.sl] += (marking * mk) * (0.25 + 0.75 * near) * vessels
        wh = cv.win(hx - 0.05 * s, hy - 0.08 * s, hx + 0.05 * s, hy + 0.08 * s)
        if wh is not None:  # hilar vessels
            rows = slice(wh.y0 - w.y0, wh.y0 - w.y0 + wh.y.shape[0])
            cols = slice(wh.x0 - w.x0, wh.x0 - w.x0 + wh.x.shape[1])
            cv.d[wh.sl] += 0.09 * _blob(wh, hx, hy, 0.05 * s, 0.08 * s) * mk[rows, cols]

    # ---- ribs (under the mediastinum and heart, which hide them)
    top, bottom = apex - 0.03 * s, max(dia_r, dia_l) + 0.02 * s
    w = cv.win(mid - lung_w - 0.03 * s, top, mid + lung_w + 0.03 * s, bottom)
    if w is not None:
        sx = np.abs(w.x - mid) / lung_w
        period = a.rib_spacing * s
        phase = (w.y - top - a.rib_curve * s * (sx - 0.15) ** 2) / period
        ribs = np.clip((np.cos(2 * np.pi * phase) - 0.2) * 1.6, 0, 1)
        ant = np.clip((np.cos(2 * np.pi * (w.y - top + 0.12 * s * sx) / (1.15 * period)) - 0.5) * 0.8, 0, 1)
        across = np.clip((sx - 0.06) * 8, 0, 1) * np.clip((1.0 - sx) * lung_w / (2 * soft) + 0.5, 0, 1)
        down = (
            a.rib_amp * np.clip((bottom - w.y) / (0.04 * s), 0, 1) * np.clip((w.y - top) / (0.04 * s), 0, 1)
        )
        cv.d[w.sl] += (across * down) * (ribs + ant)

    # ---- mediastinum, trachea, aortic knob, heart
    w = cv.win(mid - a.med_hw * s - 3, 0, mid + a.med_hw * s + 3, heart_cy)
    if w is not None:
        med = np.clip((a.med_hw * s - np.abs(w.x - mid)) / soft + 0.5, 0, 1) * np.ones_like(w.y)
        np.maximum(cv.d[w.sl], (a.tissue + 0.1) * med, out=cv.d[w.sl])
    carina = apex + 0.2 * s
    w = cv.win(mid - 0.03 * s, 0, mid + 0.03 * s, carina)
    if w is not None:
        tr = np.clip((0.012 * s - np.abs(w.x - mid)) / soft + 0.5, 0, 1) * np.clip(
            (carina - w.y) / (3 * soft), 0, 1
        )
        cv.d[w.sl] -= 0.12 * tr
    kx, ky, kr = mid + 0.065 * s, apex + 0.14 * s, 0.035 * s
    w = cv.win(kx - kr - 2, ky - kr - 2, kx + kr + 2, ky + kr + 2)
    if w is not None:
        np.maximum(cv.d[w.sl], (a.tissue + 0.12) * _ellipse(w, kx, ky, kr, kr, soft), out=cv.d[w.sl])
    w = cv.win(heart_cx - half_w - 2, heart_cy - heart_ry - 2, heart_cx + half_w + 2, heart_cy + heart_ry + 2)
    if w is not None:
        hm = _ellipse(w, heart_cx, heart_cy, heart_rx, heart_ry, soft, tilt)
        np.maximum(cv.d[w.sl], (a.tissue + 0.13) * hm, out=cv.d[w.sl])
        if "Cardiomegaly" in found:  # the silhouette above the diaphragm
            box = _box_of(hm * np.clip((dia_l - w.y) / soft + 0.5, 0, 1), w, 0.5)
            if box:
                boxes.append(("Cardiomegaly", *box))
    # Below the domes: liver and spleen, as dense as the heart, so its base merges in.
    dome_top = min(lungs[-1].dia, lungs[1].dia) - dome_h - 2
    w = cv.win(0, dome_top, s, s)
    if w is not None:
        dome = np.where(w.x < mid, lungs[-1].dome(w.x), lungs[1].dome(w.x))
        abdomen = np.clip((w.y - dome) / soft + 0.5, 0, 1) * body[w.sl]
        np.maximum(cv.d[w.sl], (a.tissue + 0.1) * abdomen, out=cv.d[w.sl])
    if a.gastric_bubble > 0.5:
        gx, gy = lungs[1].cx + 0.02 * s, dia_l + 0.045 * s
        w = cv.win(gx - 0.05 * s, gy - 0.04 * s, gx + 0.05 * s, gy + 0.04 * s)
        if w is not None:
            cv.d[w.sl] -= 0.12 * _ellipse(w, gx, gy, 0.04 * s, 0.025 * s, soft * 2)

    # ---- bones: spine, clavicles, ribs (additive: bone over anything)
    w = cv.win(mid - 0.04 * s, 0, mid + 0.04 * s, s)
    if w is not None:
        sp = np.clip((0.028 * s - np.abs(w.x - mid)) / soft + 0.5, 0, 1)
        disc = 0.85 + 0.15 * np.cos(2 * np.pi * w.y / (0.05 * s))
        cv.d[w.sl] += 0.045 * sp * disc
    for side in (-1, 1):
        x_in, x_out = mid + side * 0.04 * s, mid + side * 0.3 * s
        y_in, y_out = a.clav_y * s, (a.clav_y - a.clav_tilt) * s
        cx, cy = (x_in + x_out) / 2, (y_in + y_out) / 2
        length = math.hypot(x_out - x_in, y_out - y_in) / 2
        ang = math.atan2(y_out - y_in, x_out - x_in)
        w = cv.win(cx - length - 2, cy - length * 0.3 - 4, cx + length + 2, cy + length * 0.3 + 4)
        if w is not None:
            cv.d[w.sl] += 0.13 * _ellipse(w, cx, cy, length, 0.018 * s, soft, ang)
    # ---- lesions (in FINDINGS order, so a seed always draws the same)
    fluid = a.tissue + 0.04
    for name in FINDINGS:
        if name not in found or name not in _LESIONS:
            continue
        drawn = _LESIONS[name](cv, rng, lungs, heart, fluid, subtle(), atel_side, atel_wedge)
        if not drawn:
            raise AssertionError(f"phantom: {name} was requested but nothing was drawn")
        boxes.extend((name, *b) for b in drawn)
    if "Emphysema" in found:
        for lung in lungs.values():
            x0, y0, x1, y1 = lung.bounds()
            w = cv.win(x0, y0, x1, y1)
            if w is not None:
                box = _box_of(lung.mask(w, soft), w, 0.5)
                if box:
                    boxes.append(("Emphysema", *box))

    # ---- exposure: noise, window, gamma
    sigma = exp_rng.uniform(0.006, 0.018)
    noise = np.frombuffer(exp_rng.bytes(size * size), dtype=np.uint8).reshape(size, size)
    lo, hi = exp_rng.uniform(-0.03, 0.06), exp_rng.uniform(0.82, 0.98)
    gamma = exp_rng.uniform(0.8, 1.25)
    lut = np.round(255 * np.linspace(0, 1, 1024) ** gamma).astype(np.uint8)
    # Uniform noise of std sigma: bytes/255 - 0.5 has std 0.289.
    d = cv.d
    d += noise * np.float32(sigma * 3.46 / 255)
    d -= np.float32(lo + sigma * 1.73)
    d *= np.float32(1023 / (hi - lo))
    np.clip(d, 0, 1023, out=d)
    image = lut[d.astype(np.uint16)]
    boxes = [_clip_box(b, size) for b in boxes]
    return image, boxes


def _clip_box(b: tuple, size: int) -> tuple[str, int, int, int, int]:
    name, x, y, w, h = b
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(size, int(x) + int(w)), min(size, int(y) + int(h))
    return name, x0, y0, max(1, x1 - x0), max(1, y1 - y0)


# --------------------------------------------------------------------------- lesions
# Each draws into the canvas and returns its boxes [(x, y, w, h), ...].


def _side(rng) -> int:
    return int(rng.choice([-1, 1]))


def _atelectasis(cv, rng, lungs, heart, fluid, subtle, side, wedge):
    s, soft = cv.size, cv.soft
    lung = lungs[side]
    alpha = _contrast(rng, subtle, 0.7, 0.95)
    if wedge:  # triangle from the hilum out to the lower lateral zone
        hx, hy = lung.hilum(s)
        length = rng.uniform(0.17, 0.24) * s
        theta0 = math.radians(rng.uniform(50, 75))  # below horizontal, pointing outward
        spread = math.radians(rng.uniform(10, 17))
        w = cv.win(min(hx, hx + side * length) - 2, hy - 2, max(hx, hx + side * length) + 2, hy + length + 2)
        if w is None:
            return []
        dx, dy = (w.x - hx) * side, w.y - hy
        r = np.sqrt(dx**2 + dy**2)
        ang = np.arctan2(dy, dx)
        m = np.clip((spread - np.abs(ang - theta0)) * r / soft + 0.5, 0, 1) * np.clip(
            (length - r) / soft, 0, 1
        )
        m = m * lung.mask(w, soft)
    else:  # plate-like: a thin band in the lower zone
        cx, cy = lung.point(rng, 0.05 * s, (0.6, 0.8), heart)
        rx = rng.uniform(0.09, 0.14) * s
        ry = rng.uniform(0.012, 0.02) * s
        ang = math.radians(rng.uniform(-15, 15))
        w = cv.win(cx - rx - 2, cy - rx * 0.5 - 4, cx + rx + 2, cy + rx * 0.5 + 4)
        if w is None:
            return []
        m = _ellipse(w, cx, cy, rx, ry, soft, ang) * lung.mask(w, soft)
    _blend(cv, w, alpha * m, fluid)
    box = _box_of(m, w)
    return [box] if box else []


def _consolidation(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    lung = lungs[_side(rng)]
    upper = rng.random() < 0.5
    rx = rng.uniform(0.08, 0.12) * s * (0.75 if subtle else 1)
    ry = rng.uniform(0.07, 0.11) * s * (0.75 if subtle else 1)
    cx, cy = lung.point(rng, 0.6 * rx, (0.25, 0.45) if upper else (0.6, 0.78), heart)
    w = cv.win(cx - rx - 2, cy - ry - 2, cx + rx + 2, cy + ry + 2)
    if w is None:
        return []
    fissure = cy + (0.35 if upper else -0.35) * ry  # one flat, sharp border
    cut = np.clip(((fissure - w.y) if upper else (w.y - fissure)) / soft + 0.5, 0, 1)
    tex = 0.9 + 0.1 * _field(rng, w.y.shape[0], w.x.shape[1], s / 30)
    m = _ellipse(w, cx, cy, rx, ry, 2 * soft) * cut * lung.mask(w, soft)
    alpha = _contrast(rng, subtle, 0.75, 0.95)
    _blend(cv, w, np.clip(alpha * m * tex, 0, 1), fluid)
    for _ in range(int(rng.integers(2, 4))):  # air bronchograms: dark tubes inside
        ang = rng.uniform(0, math.pi)
        bx = cx + rng.uniform(-0.4, 0.4) * rx
        by = cy + rng.uniform(-0.3, 0.3) * ry
        tube = _ellipse(w, bx, by, 0.5 * rx, 0.012 * s + 0.3, soft, ang)
        cv.d[w.sl] -= 0.1 * alpha * tube * m
    box = _box_of(m, w)
    return [box] if box else []


def _edema(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    alpha = _contrast(rng, subtle, 0.5, 0.75)
    boxes = []
    for lung in lungs.values():  # bilateral bat wings around the hila
        hx, hy = lung.hilum(s)
        rx, ry = rng.uniform(0.12, 0.15) * s, rng.uniform(0.15, 0.19) * s
        cx = hx + lung.sign * 0.3 * rx
        w = cv.win(cx - rx, hy - ry, cx + rx, hy + ry)
        if w is None:
            continue
        prof = np.exp(-2.2 * (((w.x - cx) / rx) ** 2 + ((w.y - hy) / ry) ** 2))
        tex = 0.75 + 0.25 * _field(rng, w.y.shape[0], w.x.shape[1], s / 28)
        m = prof * tex * lung.mask(w, soft)
        _blend(cv, w, np.clip(alpha * m, 0, 1), fluid)
        box = _box_of(m, w)
        if box:
            boxes.append(box)
    return boxes


def _effusion(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    u = rng.random()
    sides = [-1] if u < 0.45 else [1] if u < 0.8 else [-1, 1]
    boxes = []
    for side in sides:
        lung = lungs[side]
        h = rng.uniform(0.08, 0.11) * s if subtle else rng.uniform(0.11, 0.25) * s
        w = cv.win(lung.cx - lung.rx - 2, lung.dia - 1.6 * h - 0.03 * s, lung.cx + lung.rx + 2, lung.dia + 2)
        if w is None:
            continue
        t = np.clip(np.abs(w.x - lung.lateral) / (2 * lung.rx), 0, 1)
        top = lung.dia - h * (0.2 + 0.8 * (1 - t) ** 2.5)  # meniscus: highest at the lateral wall
        m = np.clip((w.y - top) / (0.025 * s), 0, 1)
        # ...and a thin layer of fluid climbing the lateral chest wall above it
        wall = np.clip((0.022 * s - np.abs(w.x - lung.lateral)) / (2 * soft), 0, 1)
        wall = wall * np.clip((w.y - (lung.dia - 1.6 * h)) / (0.04 * s), 0, 1)
        m = np.maximum(m, wall) * lung.mask(w, soft)
        # Fluid is a shade less dense than the liver/spleen below: a grey band above the white.
        _blend(cv, w, _contrast(rng, subtle, 0.9, 1.0) * m, fluid - 0.05)
        box = _box_of(m, w)
        if box:
            boxes.append(box)
    return boxes


def _fibrosis(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    alpha = _contrast(rng, subtle, 0.75, 1.0)
    boxes = []
    sides = [-1, 1] if rng.random() < 0.8 else [_side(rng)]
    for side in sides:  # coarse reticular lines at the bases and periphery
        lung = lungs[side]
        x0, y0, x1, y1 = lung.bounds()
        w = cv.win(x0, y0, x1, y1)
        if w is None:
            continue
        ystart = lung.apex + rng.uniform(0.35, 0.5) * (lung.dia - lung.apex)
        basal = np.clip((w.y - ystart) / (0.06 * s), 0, 1)
        periph = np.clip(0.35 + np.abs(w.x - lung.medial) / (2 * lung.rx), 0, 1)
        region = basal * periph * lung.mask(w, soft)
        net = _field(rng, w.y.shape[0], w.x.shape[1], s / 15)
        lines = np.clip(1.0 - np.abs(net) / 0.3, 0, 1)
        cv.d[w.sl] += alpha * region * (0.28 * lines + 0.04)
        box = _box_of(region, w, 0.5)
        if box:
            boxes.append(box)
    return boxes


def _hernia(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    hcx, hcy, hrx, hry = heart
    r = rng.uniform(0.04, 0.05) * s if subtle else rng.uniform(0.05, 0.08) * s
    cx = hcx + rng.uniform(-0.15, 0.15) * hrx
    cy = lungs[1].dia - r * rng.uniform(0.6, 1.0) - 0.02 * s
    w = cv.win(cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
    if w is None:
        return []
    disk = _ellipse(w, cx, cy, r, r * 0.9, soft)
    level = cy + rng.uniform(-0.1, 0.3) * r  # air-fluid level
    gas = _ellipse(w, cx, cy, r * 0.82, r * 0.72, soft) * np.clip((level - w.y) / soft + 0.5, 0, 1)
    a = 1.0 if not subtle else 0.7
    cv.d[w.sl] += a * (0.1 * disk - 0.32 * gas)
    box = _box_of(disk, w, 0.5)
    return [box] if box else []


def _infiltration(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    boxes = []
    for _ in range(1 if rng.random() < 0.6 else 2):  # hazy, finely mottled patches
        lung = lungs[_side(rng)]
        r = rng.uniform(0.09, 0.14) * s
        cx, cy = lung.point(rng, 0.5 * r, (0.3, 0.8), heart)
        w = cv.win(cx - r, cy - 1.3 * r, cx + r, cy + 1.3 * r)
        if w is None:
            continue
        prof = np.exp(-2.0 * (((w.x - cx) / r) ** 2 + ((w.y - cy) / (1.3 * r)) ** 2))
        mottle = np.clip(_field(rng, w.y.shape[0], w.x.shape[1], s / 45) * 1.2 + 0.2, 0, 1)
        m = prof * (0.35 + 0.65 * mottle) * lung.mask(w, soft)
        _blend(cv, w, _contrast(rng, subtle, 0.6, 0.85) * m, fluid)
        box = _box_of(prof * lung.mask(w, soft), w, 0.3)
        if box:
            boxes.append(box)
    return boxes


def _mass(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    lung = lungs[_side(rng)]
    r = rng.uniform(0.06, 0.075) * s if subtle else rng.uniform(0.075, 0.11) * s
    cx, cy = lung.point(rng, 0.8 * r, (0.25, 0.75), heart)
    w = cv.win(cx - 1.3 * r, cy - 1.3 * r, cx + 1.3 * r, cy + 1.3 * r)
    if w is None:
        return []
    dx, dy = w.x - cx, w.y - cy
    ang = np.arctan2(dy, dx)
    lobes = int(rng.integers(2, 5))
    phase1, phase2 = rng.uniform(0, 2 * np.pi, 2)
    rr = r * (1 + 0.07 * np.cos(lobes * ang + phase1) + 0.05 * np.cos((lobes + 1) * ang + phase2))
    dist = np.sqrt(dx**2 + dy**2)
    m = np.clip((rr - dist) / (1.5 * soft) + 0.5, 0, 1) * (0.85 + 0.15 * np.clip(1 - dist / rr, 0, 1))
    _blend(cv, w, _contrast(rng, subtle, 0.8, 1.0) * m, fluid + 0.03)
    box = _box_of(m, w, 0.5)
    return [box] if box else []


def _nodule(cv, rng, lungs, heart, fluid, subtle, *_):
    s = cv.size
    boxes = []
    for _ in range(1 if rng.random() < 0.75 else int(rng.integers(2, 4))):
        lung = lungs[_side(rng)]
        r = rng.uniform(0.025, 0.032) * s if subtle else rng.uniform(0.032, 0.05) * s
        r = max(r, 1.2)
        cx, cy = lung.point(rng, r, (0.15, 0.8), heart)
        w = cv.win(cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
        if w is None:
            continue
        m = _blob(w, cx, cy, r, r * rng.uniform(0.85, 1.0))
        _blend(cv, w, _contrast(rng, subtle, 0.75, 1.0) * m, fluid + 0.06)
        box = _box_of(m, w, 0.2)
        if box:
            boxes.append(box)
    return boxes


def _pleural_thickening(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    lung = lungs[_side(rng)]
    # A long, smooth band hugging the lateral wall: length, not bulk, tells it from a mass.
    t = rng.uniform(0.022, 0.03) * s if subtle else rng.uniform(0.03, 0.045) * s
    v0 = rng.uniform(0.05, 0.3)
    y0 = lung.apex + v0 * (lung.dia - lung.apex)
    y1 = y0 + rng.uniform(0.5, 0.65) * (lung.dia - lung.apex)
    x0, _, x1, _ = lung.bounds()
    w = cv.win(x0 - 2, y0 - 2, x1 + 2, y1 + 2)
    if w is None:
        return []
    ends = np.clip((w.y - y0) / (0.02 * s), 0, 1) * np.clip((y1 - w.y) / (0.02 * s), 0, 1)
    # Distance from the lateral lung edge, row by row; the thickness wobbles along the wall.
    rel = np.clip((w.y - lung.cy) / lung.ry, -1, 1)
    edge_x = lung.cx + lung.sign * lung.rx * np.sqrt(1 - rel**2)
    thick = t * (1 + 0.12 * _field(rng, w.y.shape[0], 1, s / 20))
    band = np.clip((thick - np.abs(w.x - edge_x)) / soft + 0.5, 0, 1) * lung.mask(w, soft) * ends
    _blend(cv, w, _contrast(rng, subtle, 0.8, 1.0) * band, fluid + 0.03)
    box = _box_of(band, w, 0.4)
    return [box] if box else []


def _pneumonia(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    lung = lungs[_side(rng)]
    spread = rng.uniform(0.05, 0.08) * s
    cx, cy = lung.point(rng, spread, (0.45, 0.8), heart)
    w = cv.win(cx - 2.2 * spread, cy - 2.2 * spread, cx + 2.2 * spread, cy + 2.2 * spread)
    if w is None:
        return []
    m = np.zeros((w.y.shape[0], w.x.shape[1]), dtype=np.float32)
    for _ in range(int(rng.integers(3, 7))):  # several fluffy ill-defined blobs
        bx, by = cx + rng.normal(0, 0.6 * spread), cy + rng.normal(0, 0.6 * spread)
        br = rng.uniform(0.03, 0.055) * s
        np.maximum(m, np.exp(-2.5 * (((w.x - bx) ** 2 + (w.y - by) ** 2) / br**2)), out=m)
    m *= 0.55 + 0.45 * np.clip(_field(rng, m.shape[0], m.shape[1], s / 30) + 0.5, 0, 1)
    m *= lung.mask(w, soft)
    _blend(cv, w, _contrast(rng, subtle, 0.75, 0.95) * m, fluid)
    box = _box_of(m, w, 0.3)
    return [box] if box else []


_LESIONS = {
    "Atelectasis": _atelectasis,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Effusion": _effusion,
    "Fibrosis": _fibrosis,
    "Hernia": _hernia,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pleural_Thickening": _pleural_thickening,
    "Pneumonia": _pneumonia,
}
# Drawn inside make_phantom because they change the anatomy itself.
DRAWN_FINDINGS = tuple(sorted([*_LESIONS, "Cardiomegaly", "Emphysema", "Pneumothorax"]))
assert set(DRAWN_FINDINGS) == set(FINDINGS)


# --------------------------------------------------------------------------- datasets

DATA_ENTRY_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
BBOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")


@dataclass(frozen=True)
class _ImageSpec:
    index: int
    patient: int
    followup: int
    findings: tuple[str, ...]
    age: int
    sex: str
    view: str

    @property
    def name(self) -> str:
        return f"{self.patient:08d}_{self.followup:03d}.png"


def _draw_findings(rng: np.random.Generator, prevalence: dict[str, float]) -> set[str]:
    u = rng.random(len(FINDINGS))
    return {f for f, x in zip(FINDINGS, u, strict=True) if x < prevalence[f]}


def plan_dataset(n: int, seed: int, config: PhantomConfig) -> list[_ImageSpec]:
    """Patients, follow-ups and labels for ``n`` images: cheap, and fixed by the seed."""
    prevalence = config.effective_prevalence()
    weights = np.asarray(config.followups, dtype=float)
    weights = weights / weights.sum()
    specs: list[_ImageSpec] = []
    patient = 0
    while len(specs) < n:
        patient += 1
        prng = np.random.default_rng([seed, 1, patient])
        count = int(prng.choice(len(weights), p=weights)) + 1
        count = min(count, n - len(specs))
        base = _draw_findings(prng, prevalence)
        age0 = int(prng.integers(18, 86))
        sex = "M" if prng.random() < 0.56 else "F"
        for fu in range(count):
            irng = np.random.default_rng([seed, 2, len(specs)])
            fresh = _draw_findings(irng, prevalence)
            keep = irng.random(len(FINDINGS)) < config.persistence
            found = set()
            for f, k in zip(FINDINGS, keep, strict=True):
                if (f in base) if (f in CHRONIC and k) else (f in fresh):
                    found.add(f)
            for (given, then), p in config.co_occurrence.items():
                if given in found and irng.random() < p:
                    found.add(then)
            view = "AP" if irng.random() < config.ap_fraction else "PA"
            age = min(95, age0 + fu // 2)
            specs.append(
                _ImageSpec(len(specs), patient, fu, tuple(f for f in FINDINGS if f in found), age, sex, view)
            )
    return specs


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as an 8-bit grayscale PNG.

    Pillow's encoder spends ~3 ms per noisy 256-px image choosing row filters; the
    "Up" filter on every row plus zlib level 1 (RLE) is 3x faster and smaller, and
    is the same standard PNG (any reader, Pillow included, decodes it).
    """
    h, w = image.shape
    raw = np.empty((h, w + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up
    raw[0, 1:] = image[0]
    np.subtract(image[1:], image[:-1], out=raw[1:, 1:])

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, grayscale, no interlace
    # Run-length matching suits row differences of smooth images: fastest and smallest.
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", packer.compress(raw.tobytes()) + packer.flush())
        + chunk(b"IEND", b"")
    )


def _render(args: tuple) -> list[tuple[str, int, int, int, int]]:
    """Draw and save one image (runs in a worker process when --workers > 1)."""
    spec, seed, size, images_dir, subtle_fraction = args
    anatomy = sample_anatomy(np.random.default_rng([seed, 3, spec.patient]))
    rng = np.random.default_rng([seed, 4, spec.index])
    if spec.followup:
        anatomy = anatomy.jitter(rng)
    image, boxes = make_phantom(rng, size, spec.findings, anatomy, subtle_fraction)
    (Path(images_dir) / spec.name).write_bytes(png_bytes(image))
    return boxes


def write_dataset(
    out,
    n: int,
    size: int = 256,
    seed: int = 0,
    config: PhantomConfig | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``n`` phantoms in NIH's layout under ``out``; returns ``out``.

    The result depends only on (n, size, seed, config), not on ``workers``.
    """
    import pandas as pd

    from cxrdx.preprocess import MIN_IMAGE_SIZE

    config = config or PhantomConfig()
    if int(n) < 1:
        raise ConfigError(f"synth: --n must be at least 1, got {n}")
    if int(size) < MIN_IMAGE_SIZE:
        raise ConfigError(f"synth: --size must be at least {MIN_IMAGE_SIZE} px, got {size}")
    if int(workers) < 1:
        raise ConfigError(f"synth: --workers must be at least 1, got {workers}")
    out = Path(out)
    images_dir = out / "images"
    entry = out / "Data_Entry.csv"
    if entry.exists() and not overwrite:
        raise ConfigError(
            f"synth: {entry} already exists; choose an empty --out folder or pass --overwrite "
            "(which deletes the old images first)"
        )
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"synth: cannot create {images_dir}: {exc}") from exc
    if overwrite:
        for old in images_dir.glob("*.png"):
            old.unlink()

    specs = plan_dataset(int(n), int(seed), config)
    tasks = [(spec, int(seed), int(size), str(images_dir), config.subtle_fraction) for spec in specs]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="synth", unit="img", file=sys.stderr)
    if workers == 1:
        results = []
        for t in tasks:
            results.append(_render(t))
            if bar:
                bar.update()
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(int(workers)) as pool:
            results = []
            for r in pool.imap(_render, tasks, chunksize=16):
                results.append(r)
                if bar:
                    bar.update()
    if bar:
        bar.close()

    spacing = round(360.0 / size, 4)  # a ~36 cm field of view
    rows = [
        {
            "Image Index": spec.name,
            "Finding Labels": "|".join(spec.findings) or NO_FINDING,
            "Follow-up #": spec.followup,
            "Patient ID": spec.patient,
            "Patient Age": spec.age,
            "Patient Gender": spec.sex,
            "View Position": spec.view,
            "OriginalImage[Width": size,
            "Height]": size,
            "OriginalImagePixelSpacing[x": spacing,
            "y]": spacing,
        }
        for spec in specs
    ]
    pd.DataFrame(rows, columns=list(DATA_ENTRY_COLUMNS)).to_csv(entry, index=False)
    box_rows = [
        (spec.name, name, x, y, w, h)
        for spec, boxes in zip(specs, results, strict=True)
        for name, x, y, w, h in boxes
    ]
    pd.DataFrame(box_rows, columns=list(BBOX_COLUMNS)).to_csv(out / "BBox_List.csv", index=False)
    return out


# --------------------------------------------------------------------------- CLI


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic chest phantom dataset (NIH layout, known labels and boxes)",
        description="Write DIR/images/*.png, DIR/Data_Entry.csv and DIR/BBox_List.csv in NIH's "
        "format: frontal chest phantoms whose 14 findings and lesion boxes are known exactly.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument(
        "--prevalence-scale",
        type=float,
        default=1.0,
        help="multiply every finding's prevalence (default 1.0: each 4-11%%, ~45%% No Finding)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    config = PhantomConfig(prevalence_scale=args.prevalence_scale)
    t0 = time.perf_counter()
    out = write_dataset(
        args.out, args.n, args.size, args.seed, config, args.workers, overwrite=args.overwrite, progress=True
    )
    elapsed = time.perf_counter() - t0
    print(summarize(out, elapsed))
    return 0


def summarize(out: Path, elapsed: float | None = None) -> str:
    """A short text summary of a written phantom dataset."""
    import pandas as pd

    entry = pd.read_csv(out / "Data_Entry.csv")
    boxes = pd.read_csv(out / "BBox_List.csv")
    n = len(entry)
    labels = entry["Finding Labels"].str.split("|").explode()
    counts = labels.value_counts()
    lines = [f"wrote {n} phantoms of {entry['Patient ID'].nunique()} patients to {out}"]
    if elapsed:
        lines[0] += f" in {elapsed:.1f} s ({n / elapsed:.0f} images/s)"
    lines.append(f"{'finding':<20}{'images':>8}{'prev.':>8}{'boxes':>8}")
    box_counts = boxes["Finding Label"].value_counts()
    for f in FINDINGS:
        c = int(counts.get(f, 0))
        lines.append(f"{f:<20}{c:>8}{c / n:>8.1%}{int(box_counts.get(f, 0)):>8}")
    nf = int(counts.get(NO_FINDING, 0))
    lines.append(f"{NO_FINDING:<20}{nf:>8}{nf / n:>8.1%}")
    return "\n".join(lines)
