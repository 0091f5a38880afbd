"""``evaluate``: AUROC with patient-bootstrap CIs, thresholds chosen on validation, calibration, the HTML report.

The settings are ``cxrdx.evaluation.config.EvaluateConfig`` (defined once, read by the library); the
result holds the metrics that ``OUT/metrics.json`` holds, as ``cxrdx.evaluation.evaluate`` builds them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrdx.evaluation.config import EvaluateConfig as Config
from cxrdx.reporter import Reporter, reporter_or_default

__all__ = ["Config", "Result", "run"]


@dataclass
class Result:
    out: Path  # the report folder: report.html, metrics.json, predictions.csv, plots
    metrics: dict[str, Any]  # what metrics.json holds

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.evaluation.evaluate import evaluate

    reporter = reporter_or_default(reporter, "evaluate")
    if config.views == "all":
        config = dataclasses.replace(config, views=None)
    return Result(Path(config.out), evaluate(config, reporter))
