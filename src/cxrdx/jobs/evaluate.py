"""``evaluate``: AUROC with patient-bootstrap CIs, thresholds chosen on validation, calibration, the HTML report.

The settings are ``cxrdx.evaluation.config.EvaluateConfig`` (defined once, read by the library); the
result holds the record that ``OUT/metrics.json`` holds (``cxrdx.evaluation.metrics_record.MetricsRecord``,
``docs/metrics.md``), as ``cxrdx.evaluation.evaluate`` builds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrdx.evaluation.config import EvaluateConfig as Config
from cxrdx.reporter import Reporter, reporter_or_default

if TYPE_CHECKING:
    from cxrdx.evaluation.metrics_record import MetricsRecord

__all__ = ["Config", "Result", "run"]


@dataclass
class Result:
    out: Path  # the report folder: report.html, metrics.json, predictions.csv, plots
    metrics: MetricsRecord  # what metrics.json holds (``metrics.to_json()``: the file's dict)

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.evaluation.evaluate import evaluate

    reporter = reporter_or_default(reporter, "evaluate")
    if config.views == "all":
        config = dataclasses.replace(config, views=None)
    return Result(Path(config.out), evaluate(config, reporter))
