"""``cxrdx quantize``: the int8 model ``cxrdx predict --precision int8`` runs, checked against fp32 first."""

from __future__ import annotations

import argparse
import sys

from cxrdx.jobs import quantize as JOB
from cxrdx.settings import INT8_MAX_AUROC_DROP

DESCRIPTION = (
    "Quantize a checkpoint's ONNX export to int8 (ONNX Runtime static QDQ, per-channel weights), "
    "with activation ranges from training-split images of a prepared cache, then score fp32 and int8 "
    f"on its validation split. The int8 model is kept (in the cxrdx cache, for `cxrdx predict "
    f"--precision int8`) only if its mean validation AUROC is within {INT8_MAX_AUROC_DROP} of fp32's "
    "(--max-auroc-drop); otherwise nothing is written and the exit code is 1. The test split is never used."
)


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    if result.refused is not None:
        print(f"cxrdx quantize: refused: {result.refused}", file=sys.stderr)
        return 1
    report = result.report
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
        f"{config.check_split}-split images; |p int8 - p fp32| largest {report.max_abs_diff:.4f}, mean "
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
        f"wrote {report.path} ({report.variant}, calibrated on {report.n_calib} {config.calib_split}-split images, "
        f"{report.seconds:.0f} s; CPU {report.cpu}); use it with "
        f"`cxrdx predict --precision int8 --weights {config.weights} ...`"
    )
    return 0
