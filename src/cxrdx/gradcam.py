"""Grad-CAM heatmaps, overlays and localisation scores; ``cxrdx explain``.

Grad-CAM (Selvaraju et al. 2017) on ``cxrdx.model.GRADCAM_LAYER`` =
``class_layers.relu``: the activated output of DenseNet's last dense block
(after ``norm5``), the last layer that still has a spatial grid. We use MONAI's
tested ``monai.visualize.GradCAM`` and always pass the class index explicitly:
this is a multi-label model, so "the argmax class" is not the question a user asks.

MONAI's default post-processing maps (min, max) to (1, 0), i.e. it *inverts* the
map; we replace it with an identity and normalise each map to [0, 1] ourselves
(min-max; a flat map becomes all zeros, never NaN).

Localisation: ``pointing_game`` (is the heatmap's maximum inside the box?) and
``heatmap_iou`` (IoU of the thresholded heatmap with the box), both in the
source image's pixel frame, which is where box tables (NIH BBox_List, phantom
BBox_List) live and where ``Predictor.explain`` returns its heatmaps.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cxrdx.errors import ConfigError, CxrdxError, DataError
from cxrdx.labels import canonical, canonical_list
from cxrdx.model import GRADCAM_LAYER

if TYPE_CHECKING:
    import pandas as pd

    from cxrdx.predict import Predictor

Box = tuple[float, float, float, float]  # x, y, w, h in source pixels
CAM_STRIDE = 32  # DenseNet121 input pixels per cell of the last dense block


def normalize_map(cam: np.ndarray) -> np.ndarray:
    """Min-max scale one map to [0, 1]; a flat or non-finite map becomes zeros (never NaN)."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if cam.size == 0:
        return cam
    lo, hi = float(cam.min()), float(cam.max())
    if not hi - lo > 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(cam, dtype=np.float32)
    return ((cam - lo) / (hi - lo)).astype(np.float32)


class GradCam:
    """``GradCam(model)(x, class_index) -> (N, S, S)`` float32 heatmaps in [0, 1].

    Wraps ``monai.visualize.GradCAM`` on ``target_layer`` (default
    ``class_layers.relu``). MONAI registers hooks on that layer and switches its
    ``inplace`` flag off (an in-place ReLU breaks full backward hooks); the output
    values are unchanged. Works even when the caller is inside
    ``torch.inference_mode`` or ``no_grad``. Not thread-safe: ``Predictor`` holds a lock.
    """

    def __init__(self, model: nn.Module, target_layer: str = GRADCAM_LAYER) -> None:
        from monai.visualize import GradCAM

        names = {name for name, _ in model.named_modules()}
        if target_layer not in names:
            raise ConfigError(
                f"Grad-CAM target layer {target_layer!r} is not in this network; "
                f"its last layers are {sorted(names)[-5:]}"
            )
        self.model = model
        self.target_layer = target_layer
        self._cam = GradCAM(nn_module=model, target_layers=target_layer, postprocessing=lambda m: m)

    def __call__(self, x: torch.Tensor, class_index: int) -> np.ndarray:
        if x.ndim != 4:
            raise ValueError(f"Grad-CAM expects an (N, C, S, S) batch, got shape {tuple(x.shape)}")
        class_index = int(class_index)
        with torch.inference_mode(False), torch.enable_grad():
            # An inference-mode tensor cannot enter autograd; clone() outside it makes a normal one.
            x = x.detach().clone().float().requires_grad_(True)
            try:
                maps = self._cam(x, class_idx=class_index)
            finally:
                self.model.zero_grad(set_to_none=True)
        maps = maps.detach().float().cpu().numpy()[:, 0]
        return np.stack([normalize_map(m) for m in maps]).astype(np.float32)

    def many(self, x: torch.Tensor, class_indices: Sequence[int]) -> np.ndarray:
        """(K, N, S, S) heatmaps for K classes from ONE forward pass; the same maps as ``__call__``.

        Why: ``__call__`` runs a forward and a full backward (to the input and every
        weight) per class, ~3 forwards each. Grad-CAM needs only d logit / d A at the
        target layer, so here the forward runs without autograd up to that layer, A is
        made a leaf there, and each class costs one backward through the head alone
        (pool + linear: microseconds). Top-3 heatmaps then cost about one forward.
        """
        if x.ndim != 4:
            raise ValueError(f"Grad-CAM expects an (N, C, S, S) batch, got shape {tuple(x.shape)}")
        import torch.nn.functional as F

        layer = dict(self.model.named_modules())[self.target_layer]
        captured: list[torch.Tensor] = []

        def leaf(_module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
            acts = out.detach().requires_grad_(True)
            captured.append(acts)
            torch.set_grad_enabled(True)  # record the head only; no_grad's exit restores the mode
            return acts

        handle = layer.register_forward_hook(leaf)
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # MONAI's backward hook on the layer fires on d/dA with nothing upstream needing grad.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                logits = self.model(x.detach().clone().float())
                acts = captured[-1]
                cams = []
                for c in class_indices:
                    with torch.enable_grad():
                        (grad,) = torch.autograd.grad(logits[:, int(c)].sum(), acts, retain_graph=True)
                    weights = grad.mean(dim=(2, 3), keepdim=True)
                    cams.append(F.relu((weights * acts.detach()).sum(1, keepdim=True)))
                cam = F.interpolate(
                    torch.cat(cams, 1), size=x.shape[2:], mode="bilinear", align_corners=False
                )
        finally:
            handle.remove()
        out = cam.float().cpu().numpy()  # (N, K, S, S)
        return np.stack(
            [np.stack([normalize_map(m) for m in out[:, k]]) for k in range(out.shape[1])]
        ).astype(np.float32)


# --------------------------------------------------------------------------- localisation


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

    def add(
        self, image: str, heatmap: np.ndarray, boxes: Sequence[Box], threshold: float, cell_tolerance: int = 0
    ) -> tuple[bool, float]:
        hit = pointing_game(heatmap, boxes)
        cell_hit = pointing_game(heatmap, boxes, tolerance=cell_tolerance)
        iou = heatmap_iou(heatmap, boxes, threshold)
        self.n += 1
        self.hits += int(hit)
        self.cell_hits += int(cell_hit)
        self.iou_sum += iou
        self.pairs.append({"image": image, "hit": hit, "cell_hit": cell_hit, "iou": iou})
        return hit, iou

    def summary(self) -> dict:
        return {
            "finding": self.finding,
            "n": self.n,
            "pointing_game": self.pointing_game,
            "pointing_game_half_cell": self.pointing_game_cell,
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
    predictor: Predictor,
    box_table: pd.DataFrame,
    images_dir: str | os.PathLike,
    findings: Sequence[str] | None = None,
    iou_threshold: float = 0.5,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, LocalisationScore]:
    """Pointing game and IoU per finding over every boxed (image, finding) pair.

    The heatmap is computed for the boxed finding (by name, not argmax) on the
    source image's pixel grid, so the table's boxes apply directly. Images that
    are missing or unreadable are skipped and listed on stderr.
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
        tolerance = half_cell_tolerance(heatmap.shape, predictor.meta.preprocessing.size)
        scores.setdefault(finding, LocalisationScore(finding)).add(
            name, heatmap, groups[name, finding], iou_threshold, tolerance
        )
    for line in skipped:
        print(f"cxrdx explain: skipped {line}", file=sys.stderr)
    return scores


def format_localisation(scores: dict[str, LocalisationScore]) -> str:
    header = f"{'finding':<20} {'n':>5} {'pointing (strict)':>18} {'pointing (1/2 cell)':>20} {'mean IoU':>9}"
    lines = [header]
    for s in scores.values():
        lines.append(
            f"{s.finding:<20} {s.n:>5} {s.pointing_game:>18.3f} {s.pointing_game_cell:>20.3f} {s.mean_iou:>9.3f}"
        )
    n = sum(s.n for s in scores.values())
    if n:
        strict, cell = (sum(getattr(s, k) for s in scores.values()) / n for k in ("hits", "cell_hits"))
        lines.append(f"{'all':<20} {n:>5} {strict:>18.3f} {cell:>20.3f}")
    lines.append("strict: Grad-CAM peak inside the box; 1/2 cell: within half a Grad-CAM cell (16 input pixels)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- overlays


def overlay_png(
    image: np.ndarray,
    heatmap: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    boxes: Sequence[Box] = (),
    alpha: float = 0.45,
    cmap: str = "jet",
) -> Path:
    """Write the heatmap over the gray image (same pixel grid, original aspect) with a colour bar."""
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
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
    ax.imshow(heatmap, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0, interpolation="bilinear")
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _title(finding: str, prob: float, threshold: float | None) -> str:
    if threshold is None:
        call = "no threshold"
    else:
        call = f"{'positive' if prob >= threshold else 'negative'} at threshold {threshold:.3f}"
    return f"{finding} \u2014 p={prob:.2f} ({call})"


# --------------------------------------------------------------------------- CLI


@dataclass
class ExplainConfig:
    weights: str
    images: list[str]
    out: str
    findings: list[str] = field(default_factory=list)
    top_k: int = 3
    boxes: str | None = None
    device: str = "auto"
    alpha: float = 0.45
    iou_threshold: float = 0.5


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available; use --device cpu")
    return name


def explain(config: ExplainConfig) -> dict:
    """Heatmaps (.npy) and overlays (.png) per image and finding; localisation scores if boxes are given."""
    from cxrdx.predict import Predictor

    if config.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {config.top_k}")
    if not 0.0 < config.iou_threshold <= 1.0:
        raise ConfigError(f"--iou-threshold must be in (0, 1], got {config.iou_threshold}")
    predictor = Predictor.load(config.weights, device=_device(config.device))
    requested = canonical_list(config.findings) if config.findings else []
    not_output = [f for f in requested if f not in predictor.labels]
    if not_output:
        raise ConfigError(
            f"--finding {', '.join(not_output)}: this model only outputs {', '.join(predictor.labels)}"
        )
    groups: dict[tuple[str, str], list[Box]] = {}
    if config.boxes:
        from cxrdx.datasets import read_bboxes

        groups = group_boxes(read_bboxes(config.boxes))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = predictor.thresholds or {}
    results: dict = {"images": [], "localisation": {}}
    scores: dict[str, LocalisationScore] = {}
    failures = 0
    for item in config.images:
        try:
            image, _ = predictor.read(item)
        except CxrdxError as exc:
            print(f"cxrdx explain: skipped {exc}", file=sys.stderr)
            failures += 1
            continue
        x, _ = predictor.prepare(image)
        probs, _ = predictor.probabilities(x[None])
        by_name = dict(zip(predictor.labels, map(float, probs[0]), strict=True))
        name = Path(item).name
        boxed = sorted({f for (img, f) in groups if img == name and f in predictor.labels})
        findings = list(requested) or [
            f for f, _ in sorted(by_name.items(), key=lambda kv: -kv[1])[: config.top_k]
        ]
        findings += [f for f in boxed if f not in findings]
        entry = {"image": str(item), "findings": []}
        for finding in findings:
            heatmap = predictor.explain(image, finding)
            stem = f"{Path(item).stem}_{finding}"
            np.save(out / f"{stem}.npy", heatmap.astype(np.float32))
            boxes = groups.get((name, finding), [])
            overlay_png(
                image,
                heatmap,
                out / f"{stem}.png",
                _title(finding, by_name[finding], thresholds.get(finding)),
                boxes,
            )
            record = {
                "finding": finding,
                "probability": by_name[finding],
                "png": f"{stem}.png",
                "npy": f"{stem}.npy",
            }
            if boxes:
                score = scores.setdefault(finding, LocalisationScore(finding))
                hit, iou = score.add(name, heatmap, boxes, config.iou_threshold)
                record |= {"pointing_game": hit, "iou": iou}
            entry["findings"].append(record)
            print(f"{item}: {finding} p={by_name[finding]:.3f} -> {out / (stem + '.png')}")
        results["images"].append(entry)
    if failures == len(config.images):
        raise DataError(f"none of the {failures} image(s) could be read; see the messages above")
    if config.boxes:
        if scores:
            print(format_localisation(scores))
        else:
            print(f"no boxes in {config.boxes} for these images and this model's findings")
        results["localisation"] = {k: v.summary() for k, v in scores.items()}
    return results


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="Grad-CAM heatmaps per finding (overlay PNG + raw .npy), optional localisation scores",
        description=f"Grad-CAM on the last DenseNet feature layer ({GRADCAM_LAYER}) for each requested "
        "finding by name (default: the top-k findings by probability). Writes OUT/<image>_<Finding>.png "
        "(overlay at the image's original aspect) and .npy (raw heatmap in [0, 1] on the image's pixel grid).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, DICOM, ...)")
    p.add_argument("--weights", required=True, metavar="CKPT", help="a cxrdx .safetensors checkpoint")
    p.add_argument(
        "--finding", action="append", default=[], metavar="NAME", help="finding to explain (repeatable)"
    )
    p.add_argument(
        "--top-k", type=int, default=3, help="without --finding: explain the k most probable (default 3)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--boxes",
        metavar="BBOX_CSV",
        help="box table (NIH BBox_List or a phantom BBox_List.csv): draw the boxes of each image, "
        "explain their findings too, and print pointing game and IoU per finding",
    )
    p.add_argument("--iou-threshold", type=float, default=0.5, help="heatmap threshold for IoU (default 0.5)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = ExplainConfig(
        weights=args.weights,
        images=list(args.images),
        out=args.out,
        findings=list(args.finding),
        top_k=args.top_k,
        boxes=args.boxes,
        device=args.device,
        iou_threshold=args.iou_threshold,
    )
    explain(config)
    return 0


__all__ = [
    "GradCam",
    "LocalisationScore",
    "box_mask",
    "explain",
    "group_boxes",
    "heatmap_iou",
    "normalize_map",
    "overlay_png",
    "peak_location",
    "pointing_game",
    "score_localisation",
]
