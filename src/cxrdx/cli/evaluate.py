"""`cxrdx evaluate`: AUROC with patient-bootstrap CIs, thresholds, calibration and the HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrdx.cli.label_options import add_blank


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Evaluate a checkpoint on a prepared cache split or a label CSV: predictions.csv, per-class AUROC "
        "with 95%% CIs (bootstrap over patients), average precision, thresholds chosen on validation data, "
        "calibration, plots, metrics.json and report.html in --out."
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="a cxrdx .safetensors checkpoint")
    p.add_argument("--data", required=True, metavar="CSV_OR_CACHE", help="prepared cache folder or label CSV")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder")
    p.add_argument("--images", metavar="DIR", help="image folder for a label CSV")
    p.add_argument("--split", default="test", help="cache split to evaluate (default test)")
    p.add_argument("--val", metavar="VAL_CSV", help="validation label CSV (or cache) to choose thresholds on")
    p.add_argument("--val-split", default="val", help="cache split for thresholds (default val)")
    p.add_argument("--val-images", metavar="DIR", help="image folder for --val (default: --images)")
    p.add_argument(
        "--target-sensitivity",
        type=float,
        metavar="S",
        help="choose each threshold as the highest reaching this sensitivity on validation (default: Youden's J)",
    )
    p.add_argument(
        "--tta", action="store_true", help="average over a horizontal flip; reports the spread as uncertainty"
    )
    p.add_argument(
        "--ensemble", nargs="+", default=[], metavar="CKPT", help="more checkpoints to average with --weights"
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="fit the calibration (prior + per-finding temperature) on the validation data first; stored "
        "only with --out-weights or --write-thresholds (or use `cxrdx calibrate`)",
    )
    p.add_argument(
        "--write-thresholds",
        action="store_true",
        help="store the chosen thresholds (and a calibration fitted here) in --weights itself, in place",
    )
    p.add_argument(
        "--out-weights",
        metavar="NEW.safetensors",
        help="store them in this new checkpoint instead (same tensors); --weights is left as it is",
    )
    p.add_argument(  # the old opt-out; not writing is now the default
        "--no-write-thresholds", dest="write_thresholds", action="store_false", help=argparse.SUPPRESS
    )
    p.add_argument(
        "--views",
        default="frontal",
        help="views to evaluate: frontal (default), all, or a list like PA,AP",
    )
    p.add_argument(
        "--uncertain",
        choices=("ignore", "zeros", "ones"),
        default="ignore",
        help="uncertain (-1) labels: ignore = unlabelled (default), zeros or ones",
    )
    add_blank(p)
    p.add_argument(
        "--dataset", help="the label table's layout, when it is not detected (see `cxrdx stats --help`)"
    )
    p.add_argument(
        "--allow-patient-overlap",
        action="store_true",
        help="evaluate although a patient is in both --val and the test data (refused by default; noted)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def format_summary(metrics: dict) -> str:
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
    for name, c in metrics["classes"].items():
        ci = c["auroc_ci"]
        ci_txt = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "undefined"
        lines.append(
            f"{name:<20} {c['n_pos']:>6} {_fmt(c['auroc']):>7} {ci_txt:>17} {_fmt(c['average_precision']):>7} "
            f"{_fmt(c.get('ece_uncalibrated')):>7} {_fmt(c['ece']):>6} {_fmt(c['prevalence']):>6} "
            f"{_fmt(c.get('mean_predicted')):>6} {threshold_text(c['threshold']):>10}"
            + (f" {_fmt(c['chexnet_auroc'], 4):>9}" if reference else "")
            + (" (never reached)" if never_reached({name: c["threshold"]}) else "")
            + (" FLAGGED" if name in (metrics.get("flags") or {}) else "")
        )
    for name, reasons in (
        metrics.get("flags") or {}
    ).items():  # numbers that mean nothing (metrics/degenerate)
        lines.append(f"FLAGGED {name}: {'; '.join(reasons)}")
    cal = metrics.get("calibration", {})
    if "mean_ece_before" in cal:
        method = cal["method"] if isinstance(cal["method"], str) else ", ".join(cal["method"])
        lines.append(
            f"calibration {method}{' (fitted here on validation)' if cal['fitted_here'] else ''}: mean ECE "
            f"{_fmt(cal['mean_ece_before'])} raw -> {_fmt(cal['mean_ece_after'])}; mean |mean p - prevalence| "
            f"{_fmt(cal['mean_abs_gap_before'])} -> {_fmt(cal['mean_abs_gap_after'])}"
        )
        raw = [n for n, m in (cal.get("per_finding_method") or {}).items() if m == "none"]
        if raw and method != "none":
            lines.append(f"not calibrated (scores, not probabilities): {', '.join(raw)}")
    lines.append(
        f"mean AUROC over {len(metrics['mean_auroc_classes'])} defined classes: {_fmt(metrics['mean_auroc'])}"
        + (
            f" (95% patient-bootstrap CI {_fmt(ci[0])}-{_fmt(ci[1])})"
            if (ci := metrics.get("mean_auroc_ci")) and ci[0] is not None
            else ""
        )
    )
    if metrics["undefined_classes"]:
        lines.append(f"undefined (left out of the mean): {', '.join(metrics['undefined_classes'])}")
    if reference:
        lines.append(f"* {CHEXNET_LABEL}")
    kind = ((metrics.get("dataset") or {}).get("origin") or {}).get("kind")
    if kind != "real":
        lines.append(
            "note: test data "
            + ("are synthetic phantoms" if kind == "phantom" else "of unrecorded origin")
            + ": no real-data reference (CheXNet) is shown beside these AUROCs"
        )
    if ((metrics.get("model") or {}).get("card") or {}).get("kind") == "phantom":
        lines.append(
            "WARNING: the model was trained on synthetic phantoms: a demo, meaningless on real radiographs"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from cxrdx.evaluation.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig(
        weights=args.weights,
        data=args.data,
        out=args.out,
        images=args.images,
        split=args.split,
        val=args.val,
        val_split=args.val_split,
        val_images=args.val_images,
        target_sensitivity=args.target_sensitivity,
        tta=args.tta,
        ensemble=list(args.ensemble),
        n_boot=args.n_boot,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        write_thresholds=args.write_thresholds,
        out_weights=args.out_weights,
        calibrate=args.calibrate,
        progress=args.progress,
        allow_patient_overlap=args.allow_patient_overlap,
        views=None if args.views == "all" else args.views,
        uncertain=args.uncertain,
        blank=args.blank,
        dataset=args.dataset,
    )
    metrics = evaluate(config)
    print(format_summary(metrics))
    if metrics.get("skipped"):  # partial labels: outputs this dataset does not label (evaluation/external.py)
        skipped = ", ".join(metrics["skipped"])
        print(f"skipped ({len(metrics['skipped'])} outputs this dataset does not label): {skipped}")
    for name, row in (metrics.get("source_thresholds") or {}).get("shift", {}).items():
        if row.get("sensitivity_shift") is not None:
            print(
                f"{name}: checkpoint threshold {row['threshold']:.4g} moved here: sensitivity "
                f"{row['sensitivity_source']:.3f} -> {row['sensitivity_target']:.3f}, specificity "
                f"{row['specificity_source']:.3f} -> {row['specificity_target']:.3f}"
            )
    if metrics["thresholds"]["values"] is None:
        print(metrics["thresholds"]["note"])
    elif "written_to" in metrics["thresholds"]:
        fitted = " and the calibration fitted here" if metrics["calibration"].get("fitted_here") else ""
        print(
            f"thresholds ({metrics['thresholds']['method']}){fitted} written into "
            f"{metrics['thresholds']['written_to']}"
        )
    else:
        print(
            "thresholds written to thresholds.json only; add --out-weights NEW.safetensors (or "
            "--write-thresholds) to store them in a checkpoint"
        )
    print(f"report: {Path(config.out) / 'report.html'}")
    return 0
