"""Heatmap overlays: the gray image, the Grad-CAM map on top, reference boxes, a colour bar."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

Box = tuple[float, float, float, float]  # x, y, w, h in source pixels


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

    ``caveats`` (e.g. a demo model's stamp, OUT OF DISTRIBUTION) are burned in below the
    picture in red, so they travel with the file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image = np.asarray(image, dtype=np.float32)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if image.shape != heatmap.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match image shape {image.shape}")
    h, w = image.shape
    width_in = 6.4
    fig, ax = plt.subplots(figsize=(width_in, max(2.5, width_in * h / w * 0.88) + 0.6), dpi=110)
    # One picture, blended once (``overlay_rgb``: what two stacked imshow layers composite to) and
    # reduced to about the pixels the figure shows: matplotlib resampled two 1024 px layers twice
    # per file (0.75 s of an overlay's 0.8 s under load); the extent keeps source-pixel coordinates.
    picture = _at_most(overlay_rgb(image, heatmap, alpha, cmap), int(width_in * 110))
    ax.imshow(picture, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")
    shown = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, 1.0), cmap=cmap)  # opaque bar
    for x, y, bw, bh in boxes:
        ax.add_patch(Rectangle((x, y), bw, bh, fill=False, edgecolor="lime", linewidth=2))
    if len(boxes):
        ax.plot([], [], color="lime", linewidth=2, label="reference box")
        ax.legend(loc="lower right", fontsize=8, framealpha=0.7)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, label="Grad-CAM (normalised)")
    fig.tight_layout()
    if caveats:
        import textwrap

        lines = [part for c in caveats for part in textwrap.wrap(c, 95)]
        fig.set_figheight(fig.get_figheight() + 0.16 * len(lines))
        fig.subplots_adjust(bottom=(0.16 * len(lines) + 0.1) / fig.get_figheight())
        fig.text(0.5, 0.02, "\n".join(lines), ha="center", va="bottom", color="red", fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(
        path, pil_kwargs={"compress_level": 1}
    )  # zlib level 6 took most of the time left, level 1 ~1/3
    plt.close(fig)
    return path


def _at_most(picture: np.ndarray, side: int) -> np.ndarray:
    """An (H, W, 3) uint8 picture shrunk (area-weighted) so its longer side is at most ``side``."""
    h, w = picture.shape[:2]
    if max(h, w) <= side:
        return picture
    from PIL import Image

    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BILINEAR))


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """The heatmap over the gray image as an (H, W, 3) uint8 picture on the image's own grid, no axes.

    The same blend as ``overlay_png`` (the colour map at ``alpha`` over the gray image),
    for pictures that are stored as pixels (DICOM secondary captures).
    """
    from matplotlib import colormaps

    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    heatmap = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if image.shape != heatmap.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match image shape {image.shape}")
    colours = colormaps[cmap](heatmap)[..., :3].astype(np.float32)
    out = (1.0 - alpha) * image[..., None] + alpha * colours
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def overlay_title(finding: str, prob: float, threshold: float | None) -> str:
    if threshold is None:
        call = "no threshold"
    else:
        call = f"{'positive' if prob >= threshold else 'negative'} at threshold {threshold:.3f}"
    return f"{finding} \u2014 p={prob:.2f} ({call})"
