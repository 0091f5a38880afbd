"""`cxrdx stats`: images, patients, views and positives/negatives/uncertain/unlabelled per finding of a label table."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrdx.cli.label_options import add_blank, add_mixed_no_finding, mixed_no_finding

DATASETS = ("nih", "google", "chexpert", "mimic", "padchest", "vindr", "generic")  # = data.tables.DATASETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print images, patients, views and per finding positives, negatives, uncertain and unlabelled "
        "counts of a label table (NIH, Google NIH re-labels, CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR "
        "or a generic CSV; the layout is detected, or named with --dataset); optionally a bar plot."
    )
    parser.add_argument("--labels", required=True, type=Path, help="label table (.csv or .csv.gz)")
    parser.add_argument("--dataset", choices=DATASETS, help="the table's layout (default: detected)")
    parser.add_argument("--images", type=Path, help="images folder: also count how many files are found")
    parser.add_argument("--views", help="count only these views: frontal, all (default) or a list like PA,AP")
    parser.add_argument(
        "--vindr-rule",
        choices=("any", "majority"),
        default="any",
        help="VinDr-CXR: a finding is positive when any (default) or most readers marked it",
    )
    parser.add_argument("--plot", type=Path, help="write a bar plot PNG here")
    parser.add_argument(
        "--unmapped",
        type=Path,
        help="where to write every source term that has no cxrdx finding, with its image count "
        "(PadChest; default: LABELS-NAME.unmapped_terms.csv in the current folder)",
    )
    add_blank(parser)
    add_mixed_no_finding(parser)


def run(args: argparse.Namespace) -> int:
    from cxrdx.data.stats import format_stats, label_stats, plot_prevalence
    from cxrdx.data.tables import read_labels

    df = read_labels(
        args.labels,
        args.images,
        mixed_no_finding=mixed_no_finding(args),
        dataset=args.dataset,
        uncertain="keep",
        views=args.views,
        vindr_rule=args.vindr_rule,
        blank=args.blank,
    )
    stats = label_stats(df)
    print(f"{args.labels} ({df.attrs.get('format')} format; {len(stats['findings'])} findings labelled)")
    print(format_stats(stats))
    if df.attrs.get("blank_labels"):
        print(
            f"blank cells ('not mentioned' on a row that is not No Finding): {df.attrs['blank_labels']:,}, "
            f"read as {args.blank} (--blank)"
        )
    for note in df.attrs.get("notes", []):
        print(f"note: {note}")
    if df.attrs.get("unmapped_terms"):
        from cxrdx.data.stats import write_unmapped

        stem = args.labels.name.removesuffix(".gz").removesuffix(".csv")
        where = args.unmapped or Path(f"{stem}.unmapped_terms.csv")
        terms = df.attrs["unmapped_terms"]
        print(
            f"{len(terms)} source terms with no cxrdx finding (term, images) written to {write_unmapped(terms, where)}"
        )
    if df.attrs.get("views"):
        dropped = ", ".join(f"{k or '(none)'} {v:,}" for k, v in df.attrs["views"]["dropped"].items())
        print(f"views left out: {dropped or 'none'}")
    if args.images is not None:
        print(f"\nimage files found under {args.images}: {stats['resolved']:,} of {stats['images']:,}")
    if args.plot is not None:
        per = stats["per_finding"]
        ordered = sorted(per.items(), key=lambda kv: (-kv[1]["positives"], kv[0]))
        out = plot_prevalence(
            {args.labels.name: {f: c["prevalence"] for f, c in ordered}},
            args.plot,
            title=f"{args.labels.name}: {stats['images']:,} images, {stats['patients']:,} patients"
            + ("" if stats["no_finding"] is None else f", {stats['no_finding']:,} No Finding"),
            counts=stats["positives"],
        )
        print(f"plot written to {out}")
    return 0
