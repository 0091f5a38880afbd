"""``cxrdx quantize``: the int8 model ``cxrdx predict --precision int8`` runs, checked against fp32 first."""

from __future__ import annotations

import argparse
import sys

DEFAULT_CALIB = 128  # = cxrdx.inference.quantize.DEFAULT_CALIB, spelled here so --help loads nothing heavy
MAX_AUROC_DROP = 0.005  # = cxrdx.inference.quantize.MAX_AUROC_DROP


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Quantize a checkpoint's ONNX export to int8 (ONNX Runtime static QDQ, per-channel weights), "
        "with activation ranges from training-split images of a prepared cache, then score fp32 and int8 "
        f"on its validation split. The int8 model is kept (in the cxrdx cache, for `cxrdx predict "
        f"--precision int8`) only if its mean validation AUROC is within {MAX_AUROC_DROP} of fp32's; "
        "otherwise nothing is written and the exit code is 1. The test split is never used."
    )
    p.add_argument(
        "--weights", required=True, metavar="CKPT", help="cxrdx .safetensors checkpoint or a registry name"
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="CACHE",
        help="prepared cache (cxrdx prepare) with train and val splits",
    )
    p.add_argument(
        "--calib", type=int, default=DEFAULT_CALIB, help=f"training images to calibrate on ({DEFAULT_CALIB})"
    )
    p.add_argument("--calib-split", default="train", help="cache split to calibrate on (train)")
    p.add_argument("--check-split", default="val", help="cache split to check AUROC on (val)")
    p.add_argument(
        "--max-auroc-drop",
        type=float,
        default=MAX_AUROC_DROP,
        help=f"mean validation AUROC int8 may lose against fp32 ({MAX_AUROC_DROP})",
    )


def run(args: argparse.Namespace) -> int:
    from cxrdx.inference.quantize import QuantizationRefused, QuantizeConfig, quantize

    config = QuantizeConfig(
        weights=args.weights,
        data=args.data,
        calib_split=args.calib_split,
        check_split=args.check_split,
        n_calib=args.calib,
        max_auroc_drop=args.max_auroc_drop,
    )
    try:
        report = quantize(config, log=lambda line: print(f"cxrdx quantize: {line}", file=sys.stderr))
    except QuantizationRefused as exc:
        print(f"cxrdx quantize: refused: {exc}", file=sys.stderr)
        return 1
    print(f"{'finding':<20} {'AUROC fp32':>10} {'AUROC int8':>10} {'diff':>8}")
    for name, a32 in report.auroc_fp32.items():
        a8 = report.auroc_int8[name]
        print(f"{name:<20} {a32:10.4f} {a8:10.4f} {a8 - a32:+8.4f}")
    calls = (
        ""
        if report.calls_changed is None
        else f"; calls changed at the stored thresholds {report.calls_changed:.2%}"
    )
    print(
        f"mean AUROC {report.mean_fp32:.4f} (fp32) -> {report.mean_int8:.4f} (int8) on {report.n_check} "
        f"{args.check_split}-split images; |p int8 - p fp32| largest {report.max_abs_diff:.4f}, mean "
        f"{report.mean_abs_diff:.5f}{calls}"
    )
    if report.ood is not None:
        o = report.ood
        t32, t8 = o["threshold_fp32"], o["threshold_int8"]
        limits = "" if t8 is None else f"; threshold {t32:.3f} (fp32) -> {t8:.3f} (refitted for int8)"
        print(
            f"out-of-distribution score on int8 features: median {o['median_ratio_minus_1']:+.2%} against fp32's, "
            f"largest |relative difference| {o['max_rel_diff']:.2%}{limits}; verdicts changed "
            f"{o['verdicts_changed']:.2%} ({o['verdicts_changed_fp32_threshold']:.2%} with the fp32 threshold)"
        )
    print(
        f"wrote {report.path} ({report.variant}, calibrated on {report.n_calib} {args.calib_split}-split images, "
        f"{report.seconds:.0f} s; CPU {report.cpu}); use it with "
        f"`cxrdx predict --precision int8 --weights {args.weights} ...`"
    )
    return 0
