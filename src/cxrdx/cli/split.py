"""`cxrdx split`: patient-level train/val/test split of a label table."""

from __future__ import annotations

import argparse

from cxrdx.jobs import split as JOB

DESCRIPTION = (
    "Write OUT/train.csv, val.csv, test.csv (generic format) with every patient in "
    "exactly one split. With NIH's official lists, test = test_list.txt and val is carved "
    "from train_val_list.txt by patient."
)


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    splits = result.splits
    n = result.n_images
    print(f"wrote {', '.join(str(s.path) for s in splits.values())}")
    print(f"{'':<20}" + "".join(f"{k:>12}" for k in splits))
    print(f"{'images':<20}" + "".join(f"{s.images:>12,}" for s in splits.values()))
    print(f"{'  fraction':<20}" + "".join(f"{s.images / n:>12.1%}" for s in splits.values()))
    print(f"{'patients':<20}" + "".join(f"{s.patients:>12,}" for s in splits.values()))
    for f in result.findings:
        print(f"{f:<20}" + "".join(f"{s.positives[f]:>12,}" for s in splits.values()))
    return 0
