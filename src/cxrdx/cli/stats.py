"""`cxrdx stats`: images, patients and positives/prevalence per finding of a label table."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrdx.cli.label_options import add_mixed_no_finding, mixed_no_finding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print images, patients and positives/prevalence per finding of a label table "
        "(NIH Data_Entry, phantom Data_Entry.csv, or a generic CSV); optionally a bar plot."
    )
    parser.add_argument("--labels", required=True, type=Path, help="label table (.csv or .csv.gz)")
    parser.add_argument("--images", type=Path, help="images folder: also count how many files are found")
    parser.add_argument("--plot", type=Path, help="write a bar plot PNG here")
    add_mixed_no_finding(parser)


def run(args: argparse.Namespace) -> int:
    from cxrdx.data.stats import format_stats, label_stats, plot_prevalence
    from cxrdx.data.tables import read_labels

    df = read_labels(args.labels, args.images, mixed_no_finding=mixed_no_finding(args))
    stats = label_stats(df)
    print(f"{args.labels} ({df.attrs.get('format')} format)")
    print(format_stats(stats))
    if args.images is not None:
        print(f"\nimage files found under {args.images}: {stats['resolved']:,} of {stats['images']:,}")
    if args.plot is not None:
        n = max(stats["images"], 1)
        ordered = sorted(stats["positives"].items(), key=lambda kv: (-kv[1], kv[0]))
        out = plot_prevalence(
            {args.labels.name: {f: c / n for f, c in ordered}},
            args.plot,
            title=f"{args.labels.name}: {stats['images']:,} images, {stats['patients']:,} patients, "
            f"{stats['no_finding']:,} No Finding",
            counts=stats["positives"],
        )
        print(f"plot written to {out}")
    return 0
