"""``compare``: one model's evaluations on several datasets side by side (internal vs external AUROC)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrdx.evaluation.comparison_record import Comparison
from cxrdx.options import option
from cxrdx.reporter import Reporter


@dataclass
class Config:
    reports: list[str] = option(metavar="EVAL_DIR", help="internal evaluation first")
    out: Path = option(metavar="DIR", help="folder for the comparison")
    names: list[str] = option(default_factory=list, metavar="NAME", help="a short name per report")


@dataclass
class Result:
    out: Path
    comparison: Comparison  # what comparison.json holds (cxrdx.evaluation.comparison_record)


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.evaluation.external import compare

    return Result(config.out, compare(config.reports, config.out, config.names))
