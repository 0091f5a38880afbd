"""`cxrdx calibrate`: per-finding calibration fitted on labelled validation data, into a new checkpoint."""

from __future__ import annotations

import argparse

from cxrdx.jobs import calibrate as JOB

DESCRIPTION = (
    "Fit the calibration that turns the network's scores into probabilities (the training prior "
    "shift log(w_pos/w_neg) plus a per-finding temperature; Platt scaling for imported checkpoints) on "
    "labelled validation data, and write it into a NEW checkpoint. Existing thresholds are moved onto "
    "the new scale, so every call stays the same. The input checkpoint is not changed."
)


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    from cxrdx.evaluation.report import format_number as f

    cal, summary = result.calibration, result.summary
    print(
        f"calibration {cal['method']} fitted on {result.data} ({result.n_images} images); prior: "
        f"{cal['fitted_on'].get('prior')}"
    )
    if result.views_dropped:
        shown = ", ".join(f"{v or '(none)'} {n}" for v, n in result.views_dropped.items())
        print(f"views left out (--views {config.views}): {shown}")
    per = cal.get("per_finding", {})
    raw = [n for n, m in per.items() if m == "none"]
    if raw:
        print(
            f"not calibrated (fewer than {cal['fitted_on'].get('min_per_class')} positives or negatives): "
            f"{', '.join(raw)}: these stay scores (uncalibrated)"
        )
    print(
        f"{'finding':<20} {'prev':>6} {'mean p raw':>10} {'mean p cal':>10} {'ECE raw':>8} {'ECE cal':>8} {'shift':>7} {'T':>6}"
        "  method"
    )
    for name, row in summary.per_finding.items():
        print(
            f"{name:<20} {f(row.prevalence):>6} {f(row.mean_predicted_before):>10} "
            f"{f(row.mean_predicted_after):>10} {f(row.ece_before):>8} {f(row.ece_after):>8} "
            f"{cal['log_prior_shift'][name]:7.3f} {cal['temperature'][name]:6.3f}  {per.get(name, cal['method'])}"
        )
    print(
        f"mean ECE {f(summary.mean_ece_before)} -> {f(summary.mean_ece_after)}; mean |mean p - prevalence| "
        f"{f(summary.mean_abs_gap_before)} -> {f(summary.mean_abs_gap_after)} (on the fitting data itself; "
        "`cxrdx evaluate` measures it on test)"
    )
    if result.thresholds_mapped:
        print(
            "thresholds moved onto the calibrated scale (same calls"
            + (
                ", up to the TTA average: they were chosen with TTA"
                if result.thresholds_chosen_with_tta
                else ""
            )
            + ")"
        )
    if result.ood:
        ood = result.ood
        print(
            f"out-of-distribution reference fitted ({ood['fitted_on']['train_images']} reference, "
            f"{ood['fitted_on']['val_images']} threshold images): threshold {ood['threshold']:.3f}"
        )
    print(f"calibrated checkpoint: {result.out}")
    return 0
