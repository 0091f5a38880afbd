"""`cxrdx evaluate`: AUROC with patient-bootstrap CIs, thresholds, calibration and the HTML report."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cxrdx.jobs import evaluate as JOB

if TYPE_CHECKING:
    from cxrdx.evaluation.metrics_record import MetricsRecord

DESCRIPTION = (
    "Evaluate a checkpoint on a prepared cache split or a label CSV: predictions.csv, per-class AUROC "
    "with 95% CIs (bootstrap over patients), average precision, thresholds chosen on validation data, "
    "calibration, plots, metrics.json and report.html in --out."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(  # the old opt-out; not writing is now the default
        "--no-write-thresholds", dest="write_thresholds", action="store_false", help=argparse.SUPPRESS
    )


def format_summary(metrics: MetricsRecord) -> str:
    """The per-finding table printed after `cxrdx evaluate`."""
    from cxrdx.evaluation.chexnet import CHEXNET_LABEL
    from cxrdx.evaluation.report import format_number as _fmt
    from cxrdx.evaluation.report import is_real_data
    from cxrdx.model.card import never_reached, threshold_text

    reference = is_real_data(metrics)  # CheXNet's real-data column beside real data only
    lines = [
        f"{'finding':<20} {'n pos':>6} {'AUROC':>7} {'95% CI':>17} {'AP':>7} {'ECE raw':>7} {'ECE':>6} "
        f"{'prev':>6} {'mean p':>6} {'thresh':>10}" + (f" {'CheXNet*':>9}" if reference else "")
    ]
    for name, c in metrics.classes.items():
        ci = c.auroc_ci
        ci_txt = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "undefined"
        lines.append(
            f"{name:<20} {c.n_pos:>6} {_fmt(c.auroc):>7} {ci_txt:>17} {_fmt(c.average_precision):>7} "
            f"{_fmt(c.ece_uncalibrated):>7} {_fmt(c.ece):>6} {_fmt(c.prevalence):>6} "
            f"{_fmt(c.mean_predicted):>6} {threshold_text(c.threshold):>10}"
            + (f" {_fmt(c.chexnet_auroc, 4):>9}" if reference else "")
            + (" (never reached)" if never_reached({name: c.threshold}) else "")
            + (" FLAGGED" if name in metrics.flags else "")
        )
    for name, reasons in metrics.flags.items():  # numbers that mean nothing (metrics/degenerate)
        lines.append(f"FLAGGED {name}: {'; '.join(reasons)}")
    cal = metrics.calibration
    if cal is not None:
        method = cal.method_text
        lines.append(
            f"calibration {method}{' (fitted here on validation)' if cal.fitted_here else ''}: mean ECE "
            f"{_fmt(cal.mean_ece_before)} raw -> {_fmt(cal.mean_ece_after)}; mean |mean p - prevalence| "
            f"{_fmt(cal.mean_abs_gap_before)} -> {_fmt(cal.mean_abs_gap_after)}"
        )
        raw = [n for n, m in cal.per_finding_method.items() if m == "none"]
        if raw and method != "none":
            lines.append(f"not calibrated (scores, not probabilities): {', '.join(raw)}")
    ci = metrics.mean_auroc_ci
    lines.append(
        f"mean AUROC over {len(metrics.mean_auroc_classes)} defined classes: {_fmt(metrics.mean_auroc)}"
        + (f" (95% patient-bootstrap CI {_fmt(ci[0])}-{_fmt(ci[1])})" if ci and ci[0] is not None else "")
    )
    if metrics.undefined_classes:
        lines.append(f"undefined (left out of the mean): {', '.join(metrics.undefined_classes)}")
    if reference:
        lines.append(f"* {CHEXNET_LABEL}")
    kind = metrics.data_kind
    if kind != "real":
        lines.append(
            "note: test data "
            + ("are synthetic phantoms" if kind == "phantom" else "of unrecorded origin")
            + ": no real-data reference (CheXNet) is shown beside these AUROCs"
        )
    if metrics.model_kind == "phantom":
        lines.append(
            "WARNING: the model was trained on synthetic phantoms: a demo, meaningless on real radiographs"
        )
    return "\n".join(lines)


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    metrics = result.metrics
    print(format_summary(metrics))
    if metrics.skipped:  # partial labels: outputs this dataset does not label (evaluation/external.py)
        print(
            f"skipped ({len(metrics.skipped)} outputs this dataset does not label): {', '.join(metrics.skipped)}"
        )
    shift = metrics.source_thresholds.shift if metrics.source_thresholds else {}
    for name, row in shift.items():
        if row.sensitivity_shift is not None:
            print(
                f"{name}: checkpoint threshold {row.threshold:.4g} moved here: sensitivity "
                f"{row.sensitivity_source:.3f} -> {row.sensitivity_target:.3f}, specificity "
                f"{row.specificity_source:.3f} -> {row.specificity_target:.3f}"
            )
    th = metrics.thresholds
    if th is None or th.values is None:
        print(th.note if th is not None else "thresholds were not chosen")
    elif th.written_to:
        fitted = (
            " and the calibration fitted here"
            if metrics.calibration and metrics.calibration.fitted_here
            else ""
        )
        print(f"thresholds ({th.method}){fitted} written into {th.written_to}")
    else:
        print(
            "thresholds written to thresholds.json only; add --out-weights NEW.safetensors (or "
            "--write-thresholds) to store them in a checkpoint"
        )
    print(f"report: {result.report}")
    return 0
