"""`cxrdx split`: patient-level train/val/test split of a label table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrdx.cli.label_options import add_blank, add_mixed_no_finding, mixed_no_finding
from cxrdx.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write OUT/train.csv, val.csv, test.csv (generic format) with every patient in "
        "exactly one split. With NIH's official lists, test = test_list.txt and val is carved "
        "from train_val_list.txt by patient."
    )
    parser.add_argument("--labels", required=True, type=Path, help="label table (.csv or .csv.gz)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--val", type=float, default=0.1, help="fraction of images for validation (default 0.1)"
    )
    parser.add_argument("--test", type=float, default=0.2, help="fraction of images for test (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    parser.add_argument("--official-test", type=Path, help="NIH test_list.txt")
    parser.add_argument("--official-train-val", type=Path, help="NIH train_val_list.txt")
    parser.add_argument("--images", type=Path, help="images folder (needed only with --absolute-paths)")
    parser.add_argument("--absolute-paths", action="store_true", help="also write each image's absolute path")
    add_blank(parser)  # applied when the files are written: they hold 0 or blank, not "not mentioned"
    add_mixed_no_finding(parser)


def run(args: argparse.Namespace) -> int:
    from cxrdx.data.columns import _few
    from cxrdx.data.splits import split_by_patient
    from cxrdx.data.tables import read_labels, table_findings, write_labels

    if args.absolute_paths and args.images is None:
        raise ConfigError("split: --absolute-paths needs --images DIR to find the files")
    df = read_labels(
        args.labels,
        args.images,
        require_images=args.absolute_paths,
        mixed_no_finding=mixed_no_finding(args),
        blank=args.blank,
    )
    splits = split_by_patient(df, args.val, args.test, args.seed, args.official_test, args.official_train_val)
    for name, part in splits.items():
        write_labels(part, args.out / f"{name}.csv", absolute_paths=args.absolute_paths)
    n = len(df)
    print(f"wrote {', '.join(str(args.out / f'{k}.csv') for k in splits)}")
    print(f"{'':<20}" + "".join(f"{k:>12}" for k in splits))
    print(f"{'images':<20}" + "".join(f"{len(v):>12,}" for v in splits.values()))
    print(f"{'  fraction':<20}" + "".join(f"{len(v) / n:>12.1%}" for v in splits.values()))
    print(f"{'patients':<20}" + "".join(f"{v['patient'].nunique():>12,}" for v in splits.values()))
    findings = table_findings(df)  # the findings this table labels (partial labels)
    for f in findings:
        print(f"{f:<20}" + "".join(f"{int((v[f] == 1).sum()):>12,}" for v in splits.values()))
    empty = [
        f"{f} in {k}" for k, v in splits.items() if len(v) for f in findings if int((v[f] == 1).sum()) == 0
    ]
    if empty:
        print(f"warning: no positives for {_few(empty, 8)}; AUROC is undefined there", file=sys.stderr)
    return 0
