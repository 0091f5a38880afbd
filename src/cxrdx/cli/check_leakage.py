"""`cxrdx check-leakage`: exit 1 when a patient (or image) is in more than one label table."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrdx.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Exit 0 if no patient (and no image) is in more than one of the given tables; "
        "exit 1 naming them otherwise."
    )
    parser.add_argument(
        "tables", nargs="+", type=Path, help="two or more label tables (e.g. train.csv val.csv test.csv)"
    )
    parser.add_argument("--show", type=int, default=10, help="how many leaking patients to name (default 10)")


def _print_overlap(what: str, overlap: dict[str, list[str]], show: int) -> None:
    print(f"LEAK: {len(overlap)} {what}(s) appear in more than one file:")
    for key, names in list(overlap.items())[:show]:
        print(f"  {what} {key}: {', '.join(names)}")
    if len(overlap) > show:
        print(f"  ... and {len(overlap) - show} more")


def run(args: argparse.Namespace) -> int:
    from cxrdx.data.leakage import find_image_overlap, find_leaks
    from cxrdx.data.tables import read_labels

    if len(args.tables) < 2:
        raise ConfigError("check-leakage: give at least two label tables to compare")
    if len({str(t) for t in args.tables}) < len(args.tables):
        raise ConfigError("check-leakage: the same file is given twice")
    tables = {str(t): read_labels(t) for t in args.tables}
    leaks = find_leaks(tables)
    overlap = find_image_overlap(tables)
    total = sum(t["patient"].nunique() for t in tables.values())
    if not leaks and not overlap:
        print(f"no patient in more than one file ({len(tables)} files, {total:,} patients)")
        return 0
    if leaks:
        _print_overlap("patient", leaks, args.show)
    if overlap:
        _print_overlap("image", overlap, args.show)
    return 1
