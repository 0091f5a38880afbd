"""Draw one phantom: anatomy, the findings that change it, the lesions on top, then the exposure."""

from __future__ import annotations

import math

import numpy as np

from cxrdx.labels import FINDINGS, canonical_list
from cxrdx.phantom.anatomy import Anatomy, Canvas, Lung, blob, box_of, ellipse, sample_anatomy, smooth_field
from cxrdx.phantom.lesions import LESIONS


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
    cv = Canvas(size)
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
        -1: Lung.build(mid, a.medial_r * s, lung_w, apex, dia_r, dome_h, -1, size),
        1: Lung.build(mid, a.medial_l * s, lung_w, apex, dia_l, dome_h, 1, size),
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
    body = ellipse(cv.full(), mid, a.body_cy * s, a.body_rx * s, a.body_ry * s, soft * 3)
    np.multiply(body, a.tissue, out=cv.d)
    w = cv.win(mid - 0.12 * s, 0, mid + 0.12 * s, 0.2 * s)
    if w is not None:
        neck = ellipse(w, mid, 0.0, 0.11 * s, 0.2 * s, soft * 2)
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
            box = box_of(rim, w, 0.5)
            if box:
                boxes.append(("Pneumothorax", *box))
        vessels = np.abs(smooth_field(tex_rng, w.y.shape[0], w.x.shape[1], s / 22))
        vessels = np.clip(1.0 - vessels * (1 / 0.35), 0.0, 1.0)
        cv.d[w.sl] += (marking * mk) * (0.25 + 0.75 * near) * vessels
        wh = cv.win(hx - 0.05 * s, hy - 0.08 * s, hx + 0.05 * s, hy + 0.08 * s)
        if wh is not None:  # hilar vessels
            rows = slice(wh.y0 - w.y0, wh.y0 - w.y0 + wh.y.shape[0])
            cols = slice(wh.x0 - w.x0, wh.x0 - w.x0 + wh.x.shape[1])
            cv.d[wh.sl] += 0.09 * blob(wh, hx, hy, 0.05 * s, 0.08 * s) * mk[rows, cols]

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
        np.maximum(cv.d[w.sl], (a.tissue + 0.12) * ellipse(w, kx, ky, kr, kr, soft), out=cv.d[w.sl])
    w = cv.win(heart_cx - half_w - 2, heart_cy - heart_ry - 2, heart_cx + half_w + 2, heart_cy + heart_ry + 2)
    if w is not None:
        hm = ellipse(w, heart_cx, heart_cy, heart_rx, heart_ry, soft, tilt)
        np.maximum(cv.d[w.sl], (a.tissue + 0.13) * hm, out=cv.d[w.sl])
        if "Cardiomegaly" in found:  # the silhouette above the diaphragm
            box = box_of(hm * np.clip((dia_l - w.y) / soft + 0.5, 0, 1), w, 0.5)
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
            cv.d[w.sl] -= 0.12 * ellipse(w, gx, gy, 0.04 * s, 0.025 * s, soft * 2)

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
            cv.d[w.sl] += 0.13 * ellipse(w, cx, cy, length, 0.018 * s, soft, ang)
    # ---- lesions (in FINDINGS order, so a seed always draws the same)
    fluid = a.tissue + 0.04
    for name in FINDINGS:
        if name not in found or name not in LESIONS:
            continue
        drawn = LESIONS[name](cv, rng, lungs, heart, fluid, subtle(), atel_side, atel_wedge)
        if not drawn:
            raise AssertionError(f"phantom: {name} was requested but nothing was drawn")
        boxes.extend((name, *b) for b in drawn)
    if "Emphysema" in found:
        for lung in lungs.values():
            x0, y0, x1, y1 = lung.bounds()
            w = cv.win(x0, y0, x1, y1)
            if w is not None:
                box = box_of(lung.mask(w, soft), w, 0.5)
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
