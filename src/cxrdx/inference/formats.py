"""Prediction output: the table a person reads, JSON, CSV, and Grad-CAM overlay files."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrdx.errors import ImageReadError
from cxrdx.inference.predictor import ImageLike, Prediction, Predictor

NO_THRESHOLDS_NOTE = (
    "this checkpoint has no decision thresholds, so no finding is called positive or negative; "
    "choose them on labelled validation images with `cxrdx evaluate --weights CKPT --val VAL.csv ...`"
)
HEATMAP_TOP_K = 3


def format_table(predictions: Sequence[Prediction], thresholds: dict[str, float] | None) -> str:
    """What a person reads: per image, findings by falling probability, positives marked."""
    lines: list[str] = []
    for pred in predictions:
        lines.append(f"== {pred.source}")
        if not pred.ok:
            lines.append(f"   ERROR: {pred.error}")
            lines.append("")
            continue
        header = f"   {'finding':<20} {'prob':>6}"
        if thresholds:
            header += f" {'thresh':>7}  call"
        if pred.uncertainty is not None:
            header += "  \u00b1tta"
        lines.append(header)
        for name, p in pred.ranked():
            row = f"   {name:<20} {p:6.3f}"
            if thresholds:
                t = thresholds.get(name)
                if t is None:
                    row += f" {'-':>7}  -"
                else:
                    row += f" {t:7.3f}  " + ("POS *" if pred.positive and pred.positive.get(name) else "neg")
            if pred.uncertainty is not None:
                row += f"  {pred.uncertainty[name]:.3f}"
            lines.append(row.rstrip())
        if pred.positive is not None:
            pos = [n for n, _ in pred.ranked() if pred.positive.get(n)]
            lines.append(f"   positive: {', '.join(pos) if pos else 'none'}")
        for w in pred.warnings:
            lines.append(f"   warning: {w}")
        lines.append("")
    if not thresholds and any(p.ok for p in predictions):
        lines.append(f"note: {NO_THRESHOLDS_NOTE}")
    return "\n".join(lines).rstrip() + "\n"


def format_json(predictions: Sequence[Prediction]) -> str:
    return json.dumps([p.to_dict() for p in predictions], indent=2) + "\n"


def format_csv(
    predictions: Sequence[Prediction], labels: Sequence[str], thresholds: dict[str, float] | None
) -> str:
    """One row per image, one column per finding (+ ``<Finding>_positive`` when thresholds exist)."""
    positive_cols = [n for n in labels if thresholds and n in thresholds]
    tta = any(p.uncertainty is not None for p in predictions)
    header = ["image", "error", *labels, *(f"{n}_positive" for n in positive_cols)]
    header += [f"{n}_uncertainty" for n in labels] if tta else []
    header += ["warnings"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for p in predictions:
        row: list[Any] = [p.source, p.error or ""]
        row += [f"{p.probabilities[n]:.6f}" if p.ok else "" for n in labels]
        row += [("1" if p.positive[n] else "0") if p.ok and p.positive else "" for n in positive_cols]
        if tta:
            row += [f"{p.uncertainty[n]:.6f}" if p.ok and p.uncertainty else "" for n in labels]
        row.append(" | ".join(p.warnings))
        writer.writerow(row)
    return buf.getvalue()


# --------------------------------------------------------------------------- heatmaps


def write_heatmaps(
    predictor: Predictor, pred: Prediction, item: ImageLike, out_dir: Path, stem: str
) -> list[Path]:
    """Grad-CAM overlays (PNG) for the image's top findings, named ``<stem>_<Finding>.png``."""
    from cxrdx.explain.overlay import overlay_png

    image, _ = predictor.read(item)
    written = []
    thresholds = predictor.thresholds or {}
    for finding, p in pred.ranked()[:HEATMAP_TOP_K]:
        heatmap = predictor.explain(image, finding)
        t = thresholds.get(finding)
        call = "no threshold" if t is None else f"{'positive' if p >= t else 'negative'} at {t:.3f}"
        written.append(
            overlay_png(image, heatmap, out_dir / f"{stem}_{finding}.png", f"{finding}: p={p:.2f} ({call})")
        )
    return written


def unique_stems(paths: Sequence[str]) -> list[str]:
    """File stems for output names; repeats (same name in two folders) get _2, _3 ..."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = Path(p).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def collect_images(paths: Sequence[str], recursive: bool) -> tuple[list[Path], list[Prediction]]:
    """Files to read, plus error rows for paths that do not exist (they do not stop the batch)."""
    from cxrdx.imaging.find import find_images, no_images_message

    files: list[Path] = []
    errors: list[Prediction] = []
    for raw in paths:
        try:
            found = find_images([raw], recursive=recursive)
        except ImageReadError as exc:
            errors.append(Prediction(str(raw), error=str(exc)))
            continue
        if not found:
            errors.append(Prediction(str(raw), error=no_images_message([raw], recursive)))
        files.extend(found)
    unique = list(dict.fromkeys(files))
    if not unique:
        details = "; ".join(e.error or "" for e in errors)
        raise ImageReadError(", ".join(paths), f"nothing to predict: {details}")
    return unique, errors
