"""The one localisation scorer: pointing game and heatmap IoU against reference boxes.

``pointing_game`` (is the heatmap's maximum inside the box?) and ``heatmap_iou``
(IoU of the thresholded heatmap with the box), both in the source image's pixel
frame, which is where box tables (NIH BBox_List, phantom BBox_List) live and where
``Predictor.explain`` returns its heatmaps. Used by the explain job, the web app and
benchmarks/localization_phantom.py, so all three report the same numbers.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cxrdx.errors import CxrdxError, DataError
from cxrdx.explain.maps import CAM_STRIDE
from cxrdx.labels import canonical, canonical_list
from cxrdx.reporter import Reporter, reporter_or_default

if TYPE_CHECKING:
    import pandas as pd

Box = tuple[float, float, float, float]  # x, y, w, h in source pixels


class Explainer(Protocol):
    """What ``score_localisation`` needs of a predictor (cxrdx.inference.predictor.Predictor is one).

    A protocol, not an import: explain/ sits below inference/ and must not import it.
    """

    labels: list[str]
    meta: Any

    def read(self, item: Any) -> tuple[np.ndarray, list[str]]: ...

    def explain(self, image: Any, finding: str) -> np.ndarray: ...


def _check_box(heatmap: np.ndarray, box: Box) -> tuple[int, int, int, int]:
    """Box (x, y, w, h) -> integer pixel rectangle [x0, x1) x [y0, y1), clipped to the map."""
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise DataError(f"box {box} is not a valid (x, y, w, h) rectangle with positive width and height")
    H, W = heatmap.shape
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(W, math.ceil(x + w)), min(H, math.ceil(y + h))
    return x0, y0, x1, y1


def peak_location(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, col) of the heatmap maximum; among tied maxima the one nearest their centroid.

    Bilinear upsampling of a coarse map makes flat plateaus at the border; plain
    argmax would then always pick the plateau's top-left corner.
    """
    hm = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    peak = hm.max()
    rows, cols = np.nonzero(hm >= peak - 1e-6 * max(1.0, abs(float(peak))))
    cr, cc = rows.mean(), cols.mean()
    k = int(np.argmin((rows - cr) ** 2 + (cols - cc) ** 2))
    return int(rows[k]), int(cols[k])


def pointing_game(heatmap: np.ndarray, box: Box | Sequence[Box], tolerance: int = 0) -> bool:
    """True when the heatmap maximum lies inside the box (any of several boxes).

    ``tolerance`` widens each box by that many pixels on every side (default 0:
    strictly inside the box's pixel rectangle). An all-zero heatmap never hits.
    """
    boxes = _as_boxes(box)
    hm = np.asarray(heatmap, dtype=np.float32)
    if not np.nanmax(hm) > 0:
        return False
    r, c = peak_location(hm)
    for b in boxes:
        x0, y0, x1, y1 = _check_box(hm, b)
        if x0 - tolerance <= c < x1 + tolerance and y0 - tolerance <= r < y1 + tolerance:
            return True
    return False


@functools.lru_cache(maxsize=32)
def cell_peaks(image_shape: tuple[int, int], input_size: int) -> np.ndarray:
    """(K, 2) source-frame (row, col) where the heatmap of each of the K Grad-CAM cells peaks.

    Each cell's map (one at that cell, zero elsewhere) goes through the path a real heatmap
    takes: the bilinear upsampling to the input, ``to_source`` (crop, resize, normalise over
    the image) and ``peak_location``. A cell at the border peaks on a plateau between the
    border and its centre, so a box along the border is hit by chance although no cell
    centre lies in it; a cell over the letterbox padding peaks at the image's edge next to it.
    """
    import torch

    from cxrdx.explain.gradcam import normalize_map, to_source, upsample_cams
    from cxrdx.imaging.letterbox import letterbox

    h, w = image_shape
    cells = max(1, input_size // CAM_STRIDE)
    box = letterbox(np.zeros((h, w), np.uint8), input_size)[1]
    peaks = []
    for r in range(cells):
        for c in range(cells):
            one = torch.zeros(1, 1, cells, cells)
            one[0, 0, r, c] = 1.0
            square = normalize_map(upsample_cams(one, (input_size, input_size))[0, 0].numpy())
            peaks.append(peak_location(to_source(square, box)))
    return np.asarray(peaks, dtype=np.int64).reshape(-1, 2)


def chance_hit_rate(
    image_shape: tuple[int, int], input_size: int, box: Box | Sequence[Box], tolerance: int = 0
) -> float:
    """The pointing game of a uniformly random peak cell: the fraction of Grad-CAM cells whose heatmap,
    through the heatmaps' own upsampling, letterbox crop and peak finding (``cell_peaks``), peaks inside
    a box widened by ``tolerance``, by ``pointing_game``'s own test.

    At 4x4 or 8x8 grids a large box is hit by chance most of the time; a hit rate means
    something only beside this baseline for the same boxes.
    """
    peaks = cell_peaks(tuple(int(v) for v in image_shape), int(input_size))
    if not len(peaks):
        return 0.0
    grid = np.broadcast_to(np.False_, tuple(int(v) for v in image_shape))  # a shape for _check_box
    hit = np.zeros(len(peaks), dtype=bool)
    for b in _as_boxes(box):
        x0, y0, x1, y1 = _check_box(grid, b)
        r, c = peaks[:, 0], peaks[:, 1]
        hit |= (x0 - tolerance <= c) & (c < x1 + tolerance) & (y0 - tolerance <= r) & (r < y1 + tolerance)
    return float(hit.mean())


def box_mask(shape: tuple[int, int], box: Box | Sequence[Box]) -> np.ndarray:
    """Boolean mask of the union of boxes on a (H, W) grid."""
    mask = np.zeros(shape, dtype=bool)
    for b in _as_boxes(box):
        x0, y0, x1, y1 = _check_box(mask, b)
        mask[y0:y1, x0:x1] = True
    return mask


def heatmap_iou(heatmap: np.ndarray, box: Box | Sequence[Box], threshold: float = 0.5) -> float:
    """IoU between ``heatmap >= threshold`` (heatmap in [0, 1]) and the union of the boxes."""
    hm = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    target = box_mask(hm.shape, box)
    pred = hm >= threshold if hm.max() > 0 else np.zeros_like(target)
    union = np.logical_or(pred, target).sum()
    return float(np.logical_and(pred, target).sum() / union) if union else 0.0


def _as_boxes(box: Box | Sequence[Box]) -> list[Box]:
    arr = np.asarray(box, dtype=np.float64)
    if arr.ndim == 1 and arr.shape == (4,):
        return [tuple(arr)]  # type: ignore[list-item]
    if arr.ndim == 2 and arr.shape[1] == 4 and len(arr):
        return [tuple(row) for row in arr]  # type: ignore[misc]
    raise ValueError(f"expected a box (x, y, w, h) or a list of them, got {box!r}")


@dataclass
class LocalisationScore:
    """Per finding: pointing-game hit rate and mean IoU over (image, finding) pairs with boxes."""

    finding: str
    n: int = 0  # (image, finding) pairs scored; several boxes of one finding on one image count once
    hits: int = 0  # peak strictly inside a box
    cell_hits: int = 0  # peak within half a Grad-CAM cell of a box
    iou_sum: float = 0.0
    chance_sum: float = 0.0  # expected strict hits of a uniformly random peak cell (chance_hit_rate)
    chance_cell_sum: float = 0.0  # the same within half a cell
    pairs: list[dict] = field(default_factory=list)

    @property
    def pointing_game(self) -> float | None:
        return self.hits / self.n if self.n else None

    @property
    def pointing_game_cell(self) -> float | None:
        return self.cell_hits / self.n if self.n else None

    @property
    def mean_iou(self) -> float | None:
        return self.iou_sum / self.n if self.n else None

    @property
    def chance(self) -> float | None:
        return self.chance_sum / self.n if self.n else None

    @property
    def chance_cell(self) -> float | None:
        return self.chance_cell_sum / self.n if self.n else None

    def add(
        self,
        image: str,
        heatmap: np.ndarray,
        boxes: Sequence[Box],
        threshold: float,
        input_size: int,
        cell_tolerance: int = 0,
    ) -> tuple[bool, float]:
        hit = pointing_game(heatmap, boxes)
        cell_hit = pointing_game(heatmap, boxes, tolerance=cell_tolerance)
        iou = heatmap_iou(heatmap, boxes, threshold)
        chance = chance_hit_rate(heatmap.shape, input_size, boxes)
        chance_cell = chance_hit_rate(heatmap.shape, input_size, boxes, cell_tolerance)
        self.n += 1
        self.hits += int(hit)
        self.cell_hits += int(cell_hit)
        self.iou_sum += iou
        self.chance_sum += chance
        self.chance_cell_sum += chance_cell
        self.pairs.append(
            {
                "image": image,
                "hit": hit,
                "cell_hit": cell_hit,
                "iou": iou,
                "chance": chance,
                "chance_cell": chance_cell,
            }
        )
        return hit, iou

    def summary(self) -> dict:
        from cxrdx.metrics.degenerate import below_chance

        flags = [
            below_chance(self.pointing_game, self.chance, "pointing game (strict)"),
            below_chance(self.pointing_game_cell, self.chance_cell, "pointing game (1/2 cell)"),
        ]
        return {
            "flags": [f for f in flags if f],
            "finding": self.finding,
            "n": self.n,
            "pointing_game": self.pointing_game,
            "pointing_game_half_cell": self.pointing_game_cell,
            "chance": self.chance,
            "chance_half_cell": self.chance_cell,
            "mean_iou": self.mean_iou,
        }


def half_cell_tolerance(image_shape: tuple[int, int], input_size: int) -> int:
    """Half a Grad-CAM cell, in source pixels.

    The last dense block is 1/32 of the input (4x4 at 128 px), so the map cannot put its
    peak closer than that to a lesion smaller than a cell: a strict pointing game then
    measures the grid, not the model. This tolerance is the resolution Grad-CAM has.
    """
    return int(round(0.5 * CAM_STRIDE * max(image_shape) / input_size))


def group_boxes(box_table: pd.DataFrame) -> dict[tuple[str, str], list[Box]]:
    """{(image file name, finding): [boxes]} from a box table (image, finding, x, y, w, h)."""
    missing = [c for c in ("image", "finding", "x", "y", "w", "h") if c not in box_table.columns]
    if missing:
        raise DataError(f"box table lacks column(s) {missing}; expected image, finding, x, y, w, h")
    groups: dict[tuple[str, str], list[Box]] = {}
    for row in box_table.itertuples(index=False):
        key = (Path(str(row.image)).name, canonical(str(row.finding)))
        groups.setdefault(key, []).append((float(row.x), float(row.y), float(row.w), float(row.h)))
    return groups


def score_localisation(
    predictor: Explainer,
    box_table: pd.DataFrame,
    images_dir: str | os.PathLike,
    findings: Sequence[str] | None = None,
    iou_threshold: float = 0.5,
    limit: int | None = None,
    progress: bool = True,
    reporter: Reporter | None = None,
) -> dict[str, LocalisationScore]:
    """Pointing game and IoU per finding over every boxed (image, finding) pair.

    The heatmap is computed for the boxed finding (by name, not argmax) on the
    source image's pixel grid, so the table's boxes apply directly. Images that
    are missing or unreadable are skipped, each a warning to ``reporter``.
    """
    from tqdm import tqdm

    groups = group_boxes(box_table)
    wanted = set(canonical_list(findings)) if findings else None
    keys = [k for k in sorted(groups) if (wanted is None or k[1] in wanted) and k[1] in predictor.labels]
    if limit is not None:
        keys = keys[:limit]
    if not keys:
        raise DataError("no boxes to score: the box table has no rows for findings this model outputs")
    images_dir = Path(images_dir)
    scores: dict[str, LocalisationScore] = {}
    cache: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    for name, finding in tqdm(keys, desc="localisation", disable=not progress, file=sys.stderr):
        path = images_dir / name
        if name not in cache:
            cache.clear()  # keys are sorted by image: keep only the current one
            try:
                cache[name] = predictor.read(path)[0]
            except CxrdxError as exc:
                skipped.append(f"{path}: {exc}")
                continue
        heatmap = predictor.explain(cache[name], finding)
        size = predictor.meta.preprocessing.size
        tolerance = half_cell_tolerance(heatmap.shape, size)
        scores.setdefault(finding, LocalisationScore(finding)).add(
            name, heatmap, groups[name, finding], iou_threshold, size, tolerance
        )
    reporter = reporter_or_default(reporter, "explain")
    for line in skipped:
        reporter.warn(f"skipped {line}")
    return scores


def format_localisation(scores: dict[str, LocalisationScore]) -> str:
    """Each pointing-game figure beside its chance baseline (a uniformly random peak cell, same boxes)."""
    header = (
        f"{'finding':<20} {'n':>5} {'pointing (strict)':>18} {'chance':>7} {'pointing (1/2 cell)':>20} "
        f"{'chance':>7} {'mean IoU':>9}"
    )
    lines = [header]
    for s in scores.values():
        lines.append(
            f"{s.finding:<20} {s.n:>5} {s.pointing_game:>18.3f} {s.chance:>7.3f} {s.pointing_game_cell:>20.3f} "
            f"{s.chance_cell:>7.3f} {s.mean_iou:>9.3f}"
        )
    n = sum(s.n for s in scores.values())
    if n:
        keys = ("hits", "chance_sum", "cell_hits", "chance_cell_sum")
        strict, chance, cell, chance_cell = (sum(getattr(s, k) for s in scores.values()) / n for k in keys)
        lines.append(f"{'all':<20} {n:>5} {strict:>18.3f} {chance:>7.3f} {cell:>20.3f} {chance_cell:>7.3f}")
    lines.append(
        "strict: Grad-CAM peak inside the box; 1/2 cell: within half a Grad-CAM cell (16 input pixels); "
        "chance: a uniformly random peak cell for the same boxes"
    )
    from cxrdx.metrics.degenerate import below_chance

    for s in scores.values():  # a pointing game below its chance rate means nothing: flagged
        for what, value, chance in (
            ("pointing game (strict)", s.pointing_game, s.chance),
            ("pointing game (1/2 cell)", s.pointing_game_cell, s.chance_cell),
        ):
            flag = below_chance(value, chance, what)
            if flag:
                lines.append(f"FLAGGED {s.finding}: {flag}")
    return "\n".join(lines)
