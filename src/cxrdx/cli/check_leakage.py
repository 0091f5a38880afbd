"""`cxrdx check-leakage`: exit 1 when a patient (or image) is in more than one label table."""

from __future__ import annotations

import argparse

from cxrdx.jobs import check_leakage as JOB

DESCRIPTION = (
    "Exit 0 if no patient (and no image) is in more than one of the given tables; "
    "exit 1 naming them otherwise."
)


def _print_overlap(what: str, overlap: dict[str, list[str]], show: int) -> None:
    print(f"LEAK: {len(overlap)} {what}(s) appear in more than one file:")
    for key, names in list(overlap.items())[:show]:
        print(f"  {what} {key}: {', '.join(names)}")
    if len(overlap) > show:
        print(f"  ... and {len(overlap) - show} more")


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    if not result.leaks:
        print(f"no patient in more than one file ({result.n_tables} files, {result.n_patients:,} patients)")
        return 0
    if result.patients:
        _print_overlap("patient", result.patients, config.show)
    if result.images:
        _print_overlap("image", result.images, config.show)
    return 1
