"""`cxrdx evaluate`: AUROC with patient-bootstrap CIs, thresholds, calibration and the HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path


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
        "--no-write-thresholds",
        dest="write_thresholds",
        action="store_false",
        help="do not store the chosen thresholds in the checkpoint (thresholds.json is still written)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def format_summary(metrics: dict) -> str:
    """The per-finding table printed after `cxrdx evaluate`."""
    from cxrdx.evaluation.chexnet import CHEXNET_LABEL
    from cxrdx.evaluation.report import format_number as _fmt

    lines = [
        f"{'finding':<20} {'n pos':>6} {'AUROC':>7} {'95% CI':>17} {'AP':>7} {'ECE':>7} {'thresh':>8} {'CheXNet*':>9}"
    ]
    for name, c in metrics["classes"].items():
        ci = c["auroc_ci"]
        ci_txt = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "undefined"
        lines.append(
            f"{name:<20} {c['n_pos']:>6} {_fmt(c['auroc']):>7} {ci_txt:>17} {_fmt(c['average_precision']):>7} "
            f"{_fmt(c['ece']):>7} {_fmt(c['threshold'], 4):>8} {_fmt(c['chexnet_auroc'], 4):>9}"
        )
    lines.append(
        f"mean AUROC over {len(metrics['mean_auroc_classes'])} defined classes: {_fmt(metrics['mean_auroc'])}"
    )
    if metrics["undefined_classes"]:
        lines.append(f"undefined (left out of the mean): {', '.join(metrics['undefined_classes'])}")
    lines.append(f"* {CHEXNET_LABEL}")
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
        progress=args.progress,
    )
    metrics = evaluate(config)
    print(format_summary(metrics))
    if metrics["thresholds"]["values"] is None:
        print(metrics["thresholds"]["note"])
    elif "written_to" in metrics["thresholds"]:
        print(
            f"thresholds ({metrics['thresholds']['method']}) written into {metrics['thresholds']['written_to']}"
        )
    print(f"report: {Path(config.out) / 'report.html'}")
    return 0
