"""Prediction output: the table a person reads, JSON, CSV, and Grad-CAM overlay files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrdx.errors import CxrdxError, ImageReadError
from cxrdx.inference.prediction import Prediction
from cxrdx.inference.predictor import ImageLike, Predictor
from cxrdx.settings import TOP_K
from cxrdx.spreadsheet import csv_line, safe_cell

NO_THRESHOLDS_NOTE = (
    "this checkpoint has no decision thresholds, so no finding is called positive or negative; "
    "choose them on labelled validation images with `cxrdx evaluate --weights CKPT --val VAL.csv ...`"
)
PARTLY_CALIBRATED_NOTE = (
    "score (uncalibrated): {names} could not be calibrated (too few positives or negatives in the "
    "calibration data), so their numbers rank images but are not probabilities"
)
UNCALIBRATED_NOTE = (
    "score (uncalibrated): this checkpoint is not calibrated, so its numbers rank images but are not "
    "probabilities; calibrate it on labelled validation images with "
    "`cxrdx calibrate --weights CKPT --data VAL --out NEW.safetensors`"
)
HEATMAP_TOP_K = TOP_K


def ood_warning(pred: Prediction, threshold: float | None = None) -> str | None:
    """The warning for an out-of-distribution image (None when it is in distribution or unknown)."""
    if pred.in_distribution is not False:
        return None
    limit = "" if threshold is None else f" > threshold {threshold:.2f}"
    return (
        "OUT OF DISTRIBUTION: this image is unlike the images the model was trained on "
        f"(OOD score {pred.ood_score:.2f}{limit}); its findings and calls are unreliable"
    )


def overlay_caveats(predictor: Predictor, pred: Prediction) -> list[str]:
    """What an overlay picture carries below its title: the demo stamp and the OOD warning (the same for
    ``cxrdx explain``, ``predict --heatmaps`` and the app's downloads; cxrdx.model.card)."""
    from cxrdx.model.card import demo_stamp

    ood = predictor.ood
    return [
        text
        for text in (demo_stamp(predictor.meta), ood_warning(pred, None if ood is None else ood.threshold))
        if text
    ]


def banner_lines(banners: Sequence[str]) -> list[str]:
    """The model card's warnings (cxrdx.model.card.banners), framed so nobody scrolls past them."""
    if not banners:
        return []
    rule = "!" * 78
    return [rule, *(f"!! {b}" for b in banners), rule, ""]


def format_table(
    predictions: Sequence[Prediction],
    thresholds: dict[str, float] | None,
    ood_threshold: float | None = None,
    banners: Sequence[str] = (),
) -> str:
    """What a person reads: the model's warnings, then per image findings by falling probability."""
    from cxrdx.model.card import never_reached, threshold_text

    lines: list[str] = banner_lines(banners)
    never = set(never_reached(thresholds))
    width = max([7, *(len(threshold_text(t)) for t in (thresholds or {}).values())])
    for pred in predictions:
        lines.append(f"== {pred.source}")
        if not pred.ok:
            lines.append(f"   ERROR: {pred.error}")
            lines.append("")
            continue
        unreliable = ood_warning(pred, ood_threshold)
        if unreliable:
            lines.append(f"   !! {unreliable}")
        header = f"   {'finding':<20} {'prob' if pred.calibration != 'none' else 'score':>6}"
        mixed = pred.calibration != "none" and bool(pred.uncalibrated)
        if thresholds:
            header += f" {'thresh':>{width}}  call"
        if pred.uncertainty is not None:
            header += "  \u00b1tta"
        lines.append(header)
        for name, p in pred.ranked():
            row = f"   {name:<20} {p:6.3f}"
            if mixed and not pred.is_probability(name):
                row = f"   {name + ' (score)':<20} {p:6.3f}"
            if thresholds:
                t = thresholds.get(name)
                if t is None:
                    row += f" {'-':>{width}}  -"
                else:
                    call = "POS *" if pred.positive and pred.positive.get(name) else "neg"
                    row += f" {threshold_text(t):>{width}}  {call}" + (
                        " (never reached)" if name in never else ""
                    )
            if pred.uncertainty is not None:
                row += f"  {pred.uncertainty[name]:.3f}"
            lines.append(row.rstrip())
        if pred.positive is not None:
            pos = [n for n, _ in pred.ranked() if pred.positive.get(n)]
            mark = " (UNRELIABLE: out of distribution)" if unreliable else ""
            lines.append(f"   positive{mark}: {', '.join(pos) if pos else 'none'}")
        for w in pred.warnings:
            lines.append(f"   warning: {w}")
        lines.append("")
    if not thresholds and any(p.ok for p in predictions):
        lines.append(f"note: {NO_THRESHOLDS_NOTE}")
    if any(p.ok and p.calibration == "none" for p in predictions):
        lines.append(f"note: {UNCALIBRATED_NOTE}")
    partly = {n for p in predictions if p.ok and p.calibration != "none" for n in p.uncalibrated}
    if partly:
        lines.append("note: " + PARTLY_CALIBRATED_NOTE.format(names=", ".join(sorted(partly))))
    return "\n".join(lines).rstrip() + "\n"


def format_json(predictions: Sequence[Prediction]) -> str:
    return json.dumps([p.to_dict() for p in predictions], indent=2) + "\n"


def format_csv(
    predictions: Sequence[Prediction], labels: Sequence[str], thresholds: dict[str, float] | None
) -> str:
    """One row per image, one column per finding (+ ``<Finding>_positive`` when thresholds exist)."""
    tta = any(p.uncertainty is not None for p in predictions)
    lines = [csv_line(csv_columns(labels, thresholds, tta))]
    lines += [csv_line(csv_row(p, labels, thresholds, tta)) for p in predictions]
    return "".join(lines)


def csv_columns(labels: Sequence[str], thresholds: dict[str, float] | None, tta: bool) -> list[str]:
    """The CSV header: image, error, the findings, their calls, the TTA spread (with ``tta``), warnings."""
    positive_cols = [n for n in labels if thresholds and n in thresholds]
    header = ["image", "error", *labels, *(f"{n}_positive" for n in positive_cols)]
    header += [f"{n}_uncertainty" for n in labels] if tta else []
    return [*header, "calibration", "ood_score", "in_distribution", "warnings"]


def csv_row(
    p: Prediction, labels: Sequence[str], thresholds: dict[str, float] | None, tta: bool
) -> list[Any]:
    """One image's CSV row, in the order of ``csv_columns``."""
    positive_cols = [n for n in labels if thresholds and n in thresholds]
    row: list[Any] = [
        safe_cell("" if p.source is None else str(p.source)),
        safe_cell(p.error or ""),
    ]  # text from the user: never a formula
    row += [f"{p.probabilities[n]:.6f}" if p.ok else "" for n in labels]
    row += [("1" if p.positive[n] else "0") if p.ok and p.positive else "" for n in positive_cols]
    if tta:
        row += [f"{p.uncertainty[n]:.6f}" if p.ok and p.uncertainty else "" for n in labels]
    # the finding columns are probabilities, or with "none" uncalibrated scores
    row.append(p.calibration_text if p.ok else "")
    row.append("" if p.ood_score is None else f"{p.ood_score:.4f}")
    row.append("" if p.in_distribution is None else ("1" if p.in_distribution else "0"))
    row.append(safe_cell(" | ".join(p.warnings)))
    return row


def format_jsonl(predictions: Sequence[Prediction]) -> str:
    """JSON Lines: one ``Prediction.to_dict()`` per line (what archives stream)."""
    return "".join(json.dumps(p.to_dict()) + "\n" for p in predictions)


# --------------------------------------------------------------------------- heatmaps


def write_heatmaps(
    predictor: Predictor, pred: Prediction, item: ImageLike, out_dir: Path, stem: str
) -> list[Path]:
    """Grad-CAM overlays (PNG) for the image's top findings, named ``<stem>_<Finding>.png``."""
    from cxrdx.explain.overlay import overlay_png

    image, _ = predictor.read(item)
    written = []
    thresholds = predictor.thresholds or {}
    top = pred.ranked()[:HEATMAP_TOP_K]
    if hasattr(predictor, "_explain_lock"):  # a cxrdx Predictor: from the file as the prediction read it,
        from cxrdx.inference.heatmaps import heatmaps  # so a captured pass's maps are found (capture_maps)

        maps = heatmaps(predictor).maps(item, [finding for finding, _ in top])
    else:
        maps = {finding: predictor.explain(image, finding) for finding, _ in top}
    for finding, p in top:
        heatmap = maps[finding]
        t = thresholds.get(finding)
        call = "no threshold" if t is None else f"{'positive' if p >= t else 'negative'} at {t:.3f}"
        what = "p" if pred.is_probability(finding) else "score (uncalibrated)"
        title = f"{finding}: {what}={p:.2f} ({call})"
        path = out_dir / f"{stem}_{finding}.png"
        written.append(overlay_png(image, heatmap, path, title, caveats=overlay_caveats(predictor, pred)))
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
    if not unique:  # each error already names its path: say each once
        details = "; ".join(e.error or "" for e in errors)
        raise CxrdxError(f"nothing to predict: {details}")
    return unique, errors
