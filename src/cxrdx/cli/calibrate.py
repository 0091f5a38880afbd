"""`cxrdx calibrate`: per-finding calibration fitted on labelled validation data, into a new checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Fit the calibration that turns the network's scores into probabilities (the training prior "
        "shift log(w_pos/w_neg) plus a per-finding temperature; Platt scaling for imported checkpoints) on "
        "labelled validation data, and write it into a NEW checkpoint. Existing thresholds are moved onto "
        "the new scale, so every call stays the same. The input checkpoint is not changed."
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="a cxrdx .safetensors checkpoint")
    p.add_argument(
        "--data", required=True, metavar="CACHE_OR_CSV", help="prepared cache folder or validation label CSV"
    )
    p.add_argument(
        "--out", required=True, metavar="NEW.safetensors", help="the calibrated checkpoint to write"
    )
    p.add_argument("--images", metavar="DIR", help="image folder for a label CSV")
    p.add_argument("--split", default="val", help="cache split to fit on (default val; test is refused)")
    p.add_argument("--tta", action="store_true", help="fit on the image and its mirror (as predict --tta)")
    p.add_argument(
        "--views",
        default="frontal",
        help="views to fit on: frontal (default), all, or a list like PA,AP (as `evaluate --views`)",
    )
    p.add_argument(
        "--uncertain",
        choices=("ignore", "zeros", "ones"),
        default="ignore",
        help="uncertain (-1) labels: ignore = unlabelled (default), zeros or ones",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cxrdx.evaluation.calibrate import CalibrateConfig, calibrate
    from cxrdx.evaluation.report import format_number as f

    result = calibrate(
        CalibrateConfig(
            weights=args.weights,
            data=args.data,
            out=args.out,
            images=args.images,
            split=args.split,
            tta=args.tta,
            batch_size=args.batch_size,
            device=args.device,
            progress=args.progress,
            views=None if args.views == "all" else args.views,
            uncertain=args.uncertain,
        )
    )
    cal, summary = result["calibration"], result["summary"]
    print(
        f"calibration {cal['method']} fitted on {result['data']} ({result['n_images']} images); prior: "
        f"{cal['fitted_on'].get('prior')}"
    )
    if result["views_dropped"]:
        shown = ", ".join(f"{v or '(none)'} {n}" for v, n in result["views_dropped"].items())
        print(f"views left out (--views {args.views}): {shown}")
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
    for name, row in summary["per_finding"].items():
        print(
            f"{name:<20} {f(row['prevalence']):>6} {f(row['mean_predicted_before']):>10} "
            f"{f(row['mean_predicted_after']):>10} {f(row['ece_before']):>8} {f(row['ece_after']):>8} "
            f"{cal['log_prior_shift'][name]:7.3f} {cal['temperature'][name]:6.3f}  {per.get(name, cal['method'])}"
        )
    print(
        f"mean ECE {f(summary['mean_ece_before'])} -> {f(summary['mean_ece_after'])}; mean |mean p - prevalence| "
        f"{f(summary['mean_abs_gap_before'])} -> {f(summary['mean_abs_gap_after'])} (on the fitting data itself; "
        "`cxrdx evaluate` measures it on test)"
    )
    if result["thresholds_mapped"]:
        print(
            "thresholds moved onto the calibrated scale (same calls"
            + (
                ", up to the TTA average: they were chosen with TTA"
                if result["thresholds_chosen_with_tta"]
                else ""
            )
            + ")"
        )
    if result["ood"]:
        ood = result["ood"]
        print(
            f"out-of-distribution reference fitted ({ood['fitted_on']['train_images']} reference, "
            f"{ood['fitted_on']['val_images']} threshold images): threshold {ood['threshold']:.3f}"
        )
    print(f"calibrated checkpoint: {result['out']}")
    from cxrdx.inference.export import prepare_export_note

    prepare_export_note("calibrate", result["out"])  # so the first `cxrdx predict` is fast
    return 0
