"""`overlay_png` drawn with Pillow: the blend, the picture's aspect, boxes in source pixels, the bar."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

from cxrdx.explain.overlay import overlay_png, overlay_rgb


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)


def _blend(gray: float, heat: float, alpha: float = 0.45) -> np.ndarray:
    """The documented blend, restated with matplotlib's jet: (1 - alpha) gray + alpha colour."""
    colour = np.asarray(colormaps["jet"](heat)[:3])
    return np.round(((1 - alpha) * gray + alpha * colour) * 255)


def test_overlay_rgb_is_the_jet_blend():
    rng = np.random.default_rng(1)
    image, heat = rng.random((16, 24), dtype=np.float32), rng.random((16, 24), dtype=np.float32)
    expected = (1 - 0.45) * image[..., None] + 0.45 * colormaps["jet"](heat)[..., :3]
    assert np.abs(overlay_rgb(image, heat).astype(float) - expected * 255).max() <= 0.51


def _picture_box(rgb: np.ndarray, colour: np.ndarray) -> tuple[int, int, int, int]:
    """Rows and columns (first, last) of the pixels of one colour: the blended picture."""
    hit = (np.abs(rgb - colour) <= 1).all(axis=-1)
    rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


def test_picture_keeps_the_aspect_and_boxes_sit_on_source_pixels(tmp_path):
    h, w = 100, 200
    image, heat = np.full((h, w), 0.5, np.float32), np.zeros((h, w), np.float32)
    box = (49.5, 19.5, 100.0, 40.0)  # x, y, w, h in source pixels: edges at 49.5..149.5 and 19.5..59.5 + 0.5
    png = overlay_png(image, heat, tmp_path / "o.png", "Mass - p=0.5", boxes=[box])
    rgb = _rgb(png)
    top, bottom, left, right = _picture_box(rgb, _blend(0.5, 0.0))
    shown_w, shown_h = right - left + 1, bottom - top + 1
    assert abs(shown_w / shown_h - w / h) < 0.02  # the original aspect
    scale = shown_w / w
    lime = (rgb[..., 1] > 200) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)
    corner = (slice(top + shown_h * 4 // 5, bottom + 1), slice(left + shown_w * 4 // 5, right + 1))
    lime[corner] = False  # the legend's line is in the lower right, clear of the box
    ys, xs = np.nonzero(lime)
    # a source coordinate c is at (c + 0.5) * scale in the picture (a pixel's centre at its integer)
    for got, want in (
        (xs.min(), left + (box[0] + 0.5) * scale),
        (xs.max(), left + (box[0] + box[2] + 0.5) * scale),
        (ys.min(), top + (box[1] + 0.5) * scale),
        (ys.max(), top + (box[1] + box[3] + 0.5) * scale),
    ):
        assert abs(got - want) <= 2.5
    legend = (rgb[..., 1] > 200) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)
    assert legend[corner].sum() > 20  # the legend's "reference box" line
    plain = _rgb(overlay_png(image, heat, tmp_path / "p.png", "Mass - p=0.5"))
    assert not ((plain[..., 1] > 200) & (plain[..., 0] < 60) & (plain[..., 2] < 60)).any()


def test_colour_bar_runs_from_jet_0_at_the_bottom_to_jet_1_at_the_top(tmp_path):
    image = np.full((64, 64), 0.5, np.float32)
    rgb = _rgb(overlay_png(image, np.zeros_like(image), tmp_path / "o.png", "t"))
    top, bottom, _, right = _picture_box(rgb, _blend(0.5, 0.0))
    bar_cols = [
        c for c in range(right + 1, rgb.shape[1]) if (rgb[top + 5 : bottom - 5, c] != 255).any(axis=-1).all()
    ]
    column = rgb[:, bar_cols[len(bar_cols) // 2]]
    high, low = colormaps["jet"](1.0)[:3], colormaps["jet"](0.0)[:3]
    assert np.abs(column[top + 3] - np.round(np.asarray(high) * 255)).max() <= 8
    assert np.abs(column[bottom - 3] - np.round(np.asarray(low) * 255)).max() <= 8
    assert len(bar_cols) >= 10


def test_a_title_beyond_ascii_and_a_small_film_are_drawn(tmp_path):
    image = np.random.default_rng(0).random((32, 48), dtype=np.float32)
    png = overlay_png(image, image, tmp_path / "sub" / "o.png", "Effusion \u2014 p=0.50 (caf\u00e9 \u2265)")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.width > 600
    assert not list((tmp_path / "sub").glob(".*.tmp"))  # written atomically, no leftover
