"""One drawing function per finding that is drawn on top of the anatomy, and the table of them.

Cardiomegaly, Emphysema and Pneumothorax change the anatomy itself (heart size,
lung volume, the lung edge), so ``render.make_phantom`` draws those; every other
finding has a function here. Each draws into the canvas and returns its boxes
``[(x, y, w, h), ...]``.
"""

from __future__ import annotations

import math

import numpy as np

from cxrdx.labels import FINDINGS
from cxrdx.phantom.anatomy import blend, blob, box_of, ellipse, smooth_field


def contrast(rng: np.random.Generator, subtle: bool, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi) * (rng.uniform(0.55, 0.75) if subtle else 1.0))


def _side(rng) -> int:
    return int(rng.choice([-1, 1]))


def _atelectasis(cv, rng, lungs, heart, fluid, subtle, side, wedge):
    s, soft = cv.size, cv.soft
    lung = lungs[side]
    alpha = contrast(rng, subtle, 0.7, 0.95)
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
        m = ellipse(w, cx, cy, rx, ry, soft, ang) * lung.mask(w, soft)
    blend(cv, w, alpha * m, fluid)
    box = box_of(m, w)
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
    tex = 0.9 + 0.1 * smooth_field(rng, w.y.shape[0], w.x.shape[1], s / 30)
    m = ellipse(w, cx, cy, rx, ry, 2 * soft) * cut * lung.mask(w, soft)
    alpha = contrast(rng, subtle, 0.75, 0.95)
    blend(cv, w, np.clip(alpha * m * tex, 0, 1), fluid)
    for _ in range(int(rng.integers(2, 4))):  # air bronchograms: dark tubes inside
        ang = rng.uniform(0, math.pi)
        bx = cx + rng.uniform(-0.4, 0.4) * rx
        by = cy + rng.uniform(-0.3, 0.3) * ry
        tube = ellipse(w, bx, by, 0.5 * rx, 0.012 * s + 0.3, soft, ang)
        cv.d[w.sl] -= 0.1 * alpha * tube * m
    box = box_of(m, w)
    return [box] if box else []


def _edema(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    alpha = contrast(rng, subtle, 0.5, 0.75)
    boxes = []
    for lung in lungs.values():  # bilateral bat wings around the hila
        hx, hy = lung.hilum(s)
        rx, ry = rng.uniform(0.12, 0.15) * s, rng.uniform(0.15, 0.19) * s
        cx = hx + lung.sign * 0.3 * rx
        w = cv.win(cx - rx, hy - ry, cx + rx, hy + ry)
        if w is None:
            continue
        prof = np.exp(-2.2 * (((w.x - cx) / rx) ** 2 + ((w.y - hy) / ry) ** 2))
        tex = 0.75 + 0.25 * smooth_field(rng, w.y.shape[0], w.x.shape[1], s / 28)
        m = prof * tex * lung.mask(w, soft)
        blend(cv, w, np.clip(alpha * m, 0, 1), fluid)
        box = box_of(m, w)
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
        blend(cv, w, contrast(rng, subtle, 0.9, 1.0) * m, fluid - 0.05)
        box = box_of(m, w)
        if box:
            boxes.append(box)
    return boxes


def _fibrosis(cv, rng, lungs, heart, fluid, subtle, *_):
    s, soft = cv.size, cv.soft
    alpha = contrast(rng, subtle, 0.75, 1.0)
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
        net = smooth_field(rng, w.y.shape[0], w.x.shape[1], s / 15)
        lines = np.clip(1.0 - np.abs(net) / 0.3, 0, 1)
        cv.d[w.sl] += alpha * region * (0.28 * lines + 0.04)
        box = box_of(region, w, 0.5)
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
    disk = ellipse(w, cx, cy, r, r * 0.9, soft)
    level = cy + rng.uniform(-0.1, 0.3) * r  # air-fluid level
    gas = ellipse(w, cx, cy, r * 0.82, r * 0.72, soft) * np.clip((level - w.y) / soft + 0.5, 0, 1)
    a = 1.0 if not subtle else 0.7
    cv.d[w.sl] += a * (0.1 * disk - 0.32 * gas)
    box = box_of(disk, w, 0.5)
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
        mottle = np.clip(smooth_field(rng, w.y.shape[0], w.x.shape[1], s / 45) * 1.2 + 0.2, 0, 1)
        m = prof * (0.35 + 0.65 * mottle) * lung.mask(w, soft)
        blend(cv, w, contrast(rng, subtle, 0.6, 0.85) * m, fluid)
        box = box_of(prof * lung.mask(w, soft), w, 0.3)
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
    blend(cv, w, contrast(rng, subtle, 0.8, 1.0) * m, fluid + 0.03)
    box = box_of(m, w, 0.5)
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
        m = blob(w, cx, cy, r, r * rng.uniform(0.85, 1.0))
        blend(cv, w, contrast(rng, subtle, 0.75, 1.0) * m, fluid + 0.06)
        box = box_of(m, w, 0.2)
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
    thick = t * (1 + 0.12 * smooth_field(rng, w.y.shape[0], 1, s / 20))
    band = np.clip((thick - np.abs(w.x - edge_x)) / soft + 0.5, 0, 1) * lung.mask(w, soft) * ends
    blend(cv, w, contrast(rng, subtle, 0.8, 1.0) * band, fluid + 0.03)
    box = box_of(band, w, 0.4)
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
    m *= 0.55 + 0.45 * np.clip(smooth_field(rng, m.shape[0], m.shape[1], s / 30) + 0.5, 0, 1)
    m *= lung.mask(w, soft)
    blend(cv, w, contrast(rng, subtle, 0.75, 0.95) * m, fluid)
    box = box_of(m, w, 0.3)
    return [box] if box else []


LESIONS = {
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
DRAWN_FINDINGS = tuple(sorted([*LESIONS, "Cardiomegaly", "Emphysema", "Pneumothorax"]))
assert set(DRAWN_FINDINGS) == set(FINDINGS)
