"""`cxrdx stats`: images, patients, views and positives/negatives/uncertain/unlabelled per finding of a label table."""

from __future__ import annotations

import argparse

from cxrdx.jobs import stats as JOB

DESCRIPTION = (
    "Print images, patients, views and per finding positives, negatives, uncertain and unlabelled "
    "counts of a label table (NIH, Google NIH re-labels, CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR "
    "or a generic CSV; the layout is detected, or named with --dataset); optionally a bar plot."
)


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    from cxrdx.data.stats import format_stats

    stats = result.stats
    print(f"{result.labels} ({result.table_format} format; {len(stats['findings'])} findings labelled)")
    print(format_stats(stats))
    if result.blank_labels:
        print(
            f"blank cells ('not mentioned' on a row that is not No Finding): {result.blank_labels:,}, "
            f"read as {config.blank} (--blank)"
        )
    for note in result.notes:
        print(f"note: {note}")
    if result.unmapped is not None:
        print(
            f"{result.unmapped_terms} source terms with no cxrdx finding (term, images) written to {result.unmapped}"
        )
    if result.views_dropped is not None:
        dropped = ", ".join(f"{k or '(none)'} {v:,}" for k, v in result.views_dropped.items())
        print(f"views left out: {dropped or 'none'}")
    if config.images is not None:
        print(f"\nimage files found under {config.images}: {stats['resolved']:,} of {stats['images']:,}")
    if result.plot is not None:
        print(f"plot written to {result.plot}")
    return 0
