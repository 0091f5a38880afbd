"""`cxrdx compare`: one model's evaluations on several datasets side by side (internal vs external AUROC)."""

from __future__ import annotations

import argparse

from cxrdx.jobs import compare as JOB

DESCRIPTION = (
    "Compare evaluations of one model (folders written by `cxrdx evaluate`, or their metrics.json): "
    "per finding AUROC with 95% CIs on each dataset, the drop from the first (internal) one, the "
    "findings skipped and why; writes comparison.json, comparison.md and comparison.png in --out."
)


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    from cxrdx.evaluation.external import format_comparison

    print(format_comparison(result.comparison))
    print(f"comparison written to {result.out}")
    return 0
