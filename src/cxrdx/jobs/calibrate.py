"""``calibrate``: per-finding calibration (prior shift + temperature; Platt for imports) fitted on validation data.

Written into a NEW checkpoint (the input is not changed); existing thresholds are moved onto the
new scale, so every call stays the same. Settings: ``cxrdx.evaluation.config.CalibrateConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrdx.evaluation.config import CalibrateConfig as Config
from cxrdx.reporter import Reporter, reporter_or_default

if TYPE_CHECKING:
    from cxrdx.evaluation.metrics_record import CalibrationSummary

__all__ = ["Config", "Result", "run"]


@dataclass
class Result:
    out: Path  # the calibrated checkpoint
    data: str  # what it was fitted on
    n_images: int
    views_dropped: dict[str, int]  # views left out by ``views`` -> how many images
    previous: str  # the calibration method the input checkpoint had
    calibration: dict[str, Any]  # method, log_prior_shift, temperature, fitted_on (the checkpoint's record)
    summary: CalibrationSummary  # ECE and mean p before/after, per finding and on average (metrics.json's)
    thresholds_mapped: bool  # the checkpoint's thresholds were moved onto the calibrated scale
    thresholds_chosen_with_tta: bool
    ood: dict[str, Any] | None  # the out-of-distribution reference fitted for an import, if any


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.evaluation.calibrate import calibrate
    from cxrdx.inference.on_write import prepare_export_note

    reporter = reporter_or_default(reporter, "calibrate")
    r = calibrate(config)
    prepare_export_note("calibrate", r["out"], reporter)  # so the first `cxrdx predict` is fast
    return Result(
        out=Path(r["out"]),
        data=str(r["data"]),
        n_images=int(r["n_images"]),
        views_dropped=dict(r["views_dropped"]),
        previous=str(r["previous"]),
        calibration=r["calibration"],
        summary=r["summary"],
        thresholds_mapped=bool(r["thresholds_mapped"]),
        thresholds_chosen_with_tta=bool(r["thresholds_chosen_with_tta"]),
        ood=r["ood"],
    )
