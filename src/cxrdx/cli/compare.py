"""`cxrdx compare`: one model's evaluations on several datasets side by side (internal vs external AUROC)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Compare evaluations of one model (folders written by `cxrdx evaluate`, or their metrics.json): "
        "per finding AUROC with 95%% CIs on each dataset, the drop from the first (internal) one, the "
        "findings skipped and why; writes comparison.json, comparison.md and comparison.png in --out."
    )
    p.add_argument(
        "--reports", nargs="+", required=True, metavar="EVAL_DIR", help="internal evaluation first"
    )
    p.add_argument("--names", nargs="+", default=[], metavar="NAME", help="a short name per report")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the comparison")


def run(args: argparse.Namespace) -> int:
    from cxrdx.evaluation.external import compare, format_comparison

    result = compare(args.reports, args.out, args.names)
    print(format_comparison(result))
    print(f"comparison written to {args.out}")
    return 0
