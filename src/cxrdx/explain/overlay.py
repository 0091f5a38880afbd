"""Heatmap overlays: the gray image, the Grad-CAM map on top, reference boxes, a colour bar."""

from __future__ import annotations

import os
import textwrap
import unicodedata
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from cxrdx.explain.colormap import jet
from cxrdx.imaging.png_write import write_png

Box = tuple[float, float, float, float]  # x, y, w, h in source pixels


PICTURE_WIDTH = 600  # px: the film as shown (the PNG is about 720 px wide with the colour bar)
# zlib level 6 took about 3x as long for files a few % smaller (cxrdx.imaging.png_write)
PNG_COMPRESS_LEVEL = 1
TITLE_SIZE, TEXT_SIZE, CAVEAT_SIZE = 15, 12, 11  # font px
CAVEAT_WRAP = 95  # characters per caveat line
MARGIN = 16
BAR_WIDTH, BAR_GAP = 18, 14
BOX_COLOUR, BOX_WIDTH = (0, 255, 0), 2  # "lime"
CAVEAT_COLOUR = (255, 0, 0)
BAR_LABEL = "Grad-CAM (normalised)"


def overlay_png(
    image: np.ndarray,
    heatmap: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    boxes: Sequence[Box] = (),
    alpha: float = 0.45,
    cmap: str = "jet",
    caveats: Sequence[str] = (),
) -> Path:
    """Write the heatmap over the gray image (same pixel grid, original aspect) with a colour bar.

    Drawn with numpy and Pillow (no matplotlib): the picture ``PICTURE_WIDTH`` px wide, blended
    once at that size (``overlay_rgb``), the title above, a vertical colour bar (0 to 1) on its right,
    ``boxes`` (x, y, w, h in source pixels) in lime with a legend. ``caveats`` (e.g. a demo model's
    stamp, OUT OF DISTRIBUTION) are burned in below the picture in red, so they travel with the file."""
    from PIL import Image, ImageDraw

    image = np.asarray(image, dtype=np.float32)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if image.shape != heatmap.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match image shape {image.shape}")
    h, w = image.shape
    scale = PICTURE_WIDTH / w
    size = (PICTURE_WIDTH, max(1, round(h * scale)))
    # the film and the map resampled to the shown size, then coloured and blended (as matplotlib's imshow
    # resamples data before colouring): a 1024 px film is blended at 600 px, a third of the pixels
    shown = [
        np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize(size, Image.Resampling.BILINEAR))
        for a in (image, heatmap)
    ]
    picture = Image.fromarray(overlay_rgb(*shown, alpha, cmap))
    _draw_boxes(picture, boxes, scale)

    title_font, text_font, caveat_font = font(TITLE_SIZE), font(TEXT_SIZE), font(CAVEAT_SIZE)
    lines = [part for c in caveats for part in textwrap.wrap(printable(c), CAVEAT_WRAP)]
    title_h = 2 * TITLE_SIZE if title else MARGIN
    caveat_h = (len(lines) * (CAVEAT_SIZE + 4) + MARGIN) if lines else 0
    bar_x = MARGIN + size[0] + BAR_GAP
    tick_w = int(text_font.getlength("0")) + 8
    width = bar_x + BAR_WIDTH + tick_w + TEXT_SIZE + 8 + MARGIN
    height = title_h + size[1] + MARGIN + caveat_h
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(picture, (MARGIN, title_h))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text(
            (MARGIN + size[0] / 2, title_h / 2),
            printable(title),
            fill=(0, 0, 0),
            font=title_font,
            anchor="mm",
        )
    _colour_bar(canvas, draw, text_font, cmap, (bar_x, title_h), size[1])
    y = title_h + size[1] + MARGIN
    for line in lines:
        draw.text((width / 2, y), line, fill=CAVEAT_COLOUR, font=caveat_font, anchor="mt")
        y += CAVEAT_SIZE + 4
    path = Path(path)
    write_png(path, np.asarray(canvas), PNG_COMPRESS_LEVEL)
    return path


def _draw_boxes(picture, boxes: Sequence[Box], scale: float) -> None:
    """Reference boxes (source pixels; a pixel's centre at its integer coordinate) and their legend."""
    if not len(boxes):
        return
    from PIL import ImageDraw

    draw = ImageDraw.Draw(picture)
    for x, y, bw, bh in boxes:
        x0, y0 = (x + 0.5) * scale, (y + 0.5) * scale
        x1, y1 = x0 + bw * scale, y0 + bh * scale
        draw.rectangle((round(x0), round(y0), round(x1), round(y1)), outline=BOX_COLOUR, width=BOX_WIDTH)
    text_font = font(TEXT_SIZE)
    label, line_len, pad = "reference box", 24, 5
    box_w = int(pad + line_len + 6 + text_font.getlength(label) + pad)
    box_h = TEXT_SIZE + 2 * pad
    right, bottom = picture.width - 6, picture.height - 6
    left, top = max(0, right - box_w), max(0, bottom - box_h)
    region = np.asarray(picture.crop((left, top, right, bottom)), dtype=np.float32)
    picture.paste(_pil(np.uint8(0.3 * region + 0.7 * 255.0 + 0.5)), (left, top))  # a 70 % white frame
    draw.rectangle((left, top, right - 1, bottom - 1), outline=(204, 204, 204))
    mid = (top + bottom) // 2
    draw.line((left + pad, mid, left + pad + line_len, mid), fill=BOX_COLOUR, width=BOX_WIDTH)
    draw.text((left + pad + line_len + 6, mid), label, fill=(0, 0, 0), font=text_font, anchor="lm")


def _colour_bar(canvas, draw, font, cmap: str, at: tuple[int, int], height: int) -> None:
    """The colour map from 0 (bottom) to 1 (top), opaque, with its ticks and its label."""
    from PIL import Image, ImageDraw

    x, y = at
    values = np.linspace(1.0, 0.0, max(2, height), dtype=np.float32)[:, None]
    bar = _colours(np.repeat(values, BAR_WIDTH, axis=1), cmap)
    canvas.paste(_pil((bar * 255.0 + 0.5).astype(np.uint8)), (x, y))
    draw.rectangle((x, y, x + BAR_WIDTH - 1, y + height - 1), outline=(0, 0, 0))
    tick_x = x + BAR_WIDTH
    for value, ty in (("1", y), ("0", y + height - 1)):
        draw.line((tick_x, ty, tick_x + 4, ty), fill=(0, 0, 0))
        draw.text((tick_x + 7, ty), value, fill=(0, 0, 0), font=font, anchor="lm")
    label_w = int(font.getlength(BAR_LABEL)) + 2
    label = Image.new("RGB", (label_w, TEXT_SIZE + 6), (255, 255, 255))
    ImageDraw.Draw(label).text((1, 3), BAR_LABEL, fill=(0, 0, 0), font=font)
    label = label.rotate(90, expand=True)
    lx = tick_x + 7 + int(font.getlength("0")) + 4
    canvas.paste(label, (lx, y + max(0, (height - label.height) // 2)))


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)


@cache
def font(size: int):
    """Pillow's bundled scalable font (offline, any size)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


_ASCII = str.maketrans(
    {"\u2014": "-", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}
)


def printable(text: str) -> str:
    """``text`` in the characters Pillow's bundled font has (ASCII): dashes and quotes as ASCII, accents dropped."""
    text = unicodedata.normalize("NFKD", text.translate(_ASCII))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.encode("ascii", "replace").decode("ascii")


def _colours(values: np.ndarray, cmap: str) -> np.ndarray:
    """RGB float32 in [0, 1] of the colour map at ``values``: jet from a numpy table, any other by matplotlib."""
    if cmap == "jet":
        return jet(values)
    from matplotlib import colormaps

    return colormaps[cmap](np.clip(values, 0.0, 1.0))[..., :3].astype(np.float32)


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """The heatmap over the gray image as an (H, W, 3) uint8 picture on the image's own grid, no axes.

    The same blend as ``overlay_png`` (the colour map at ``alpha`` over the gray image),
    for pictures that are stored as pixels (DICOM secondary captures).
    """
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    heatmap = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if image.shape != heatmap.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match image shape {image.shape}")
    colours = _colours(heatmap, cmap)
    out = (1.0 - alpha) * image[..., None] + alpha * colours
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def overlay_title(finding: str, prob: float, threshold: float | None) -> str:
    if threshold is None:
        call = "no threshold"
    else:
        call = f"{'positive' if prob >= threshold else 'negative'} at threshold {threshold:.3f}"
    return f"{finding} \u2014 p={prob:.2f} ({call})"
