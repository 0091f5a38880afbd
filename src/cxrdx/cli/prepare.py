"""`cxrdx prepare`: decode and resize images once into a memory-mapped cache for training."""

from __future__ import annotations

import argparse
import sys

from cxrdx.cli.console import ConsoleReporter
from cxrdx.jobs import prepare as JOB

DESCRIPTION = (
    "Decode every image listed in the label CSV(s) once, letterbox it to SIZE x SIZE "
    "(scale the longer side, pad with black, so no anatomy is cropped), and store uint8 pixels in "
    "OUT/images.npy with OUT/index.csv (labels + row + split = CSV stem) and OUT/cache.json. "
    "Interrupted? Rerun the same command: finished images are kept. Images listed but not found "
    "stop the job (listed in OUT/not_cached.csv) unless --allow-missing; unreadable images are "
    "skipped, counted and listed in OUT/not_cached.csv and OUT/cache.json."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def reporter(args: argparse.Namespace) -> ConsoleReporter:
    return ConsoleReporter("prepare", bars=not args.no_progress)


def render(result, config: JOB.Config, args: argparse.Namespace) -> int:
    from cxrdx.data.prepare import NOT_CACHED_FILE, SHOWN_NAMES

    reused = ""
    total = result.cached + len(result.failures)
    if result.decoded < total:
        reused = f" ({total - result.decoded} already done by an earlier run)"
    counts = ", ".join(f"{k}: {v}" for k, v in result.counts.items())
    if result.failures:  # a count and the first few; all of them are in the file
        missing = sum(f["path"] == "" for f in result.failures)
        what = (
            f"{missing} not found, {len(result.failures) - missing} unreadable" if missing else "unreadable"
        )
        print(
            f"cxrdx prepare: {len(result.failures)} of {total} image(s) left out ({what}); "
            f"all listed in {result.out / NOT_CACHED_FILE}. The first:",
            file=sys.stderr,
        )
        for f in result.failures[:SHOWN_NAMES]:
            print(f"  {f['image']}: {f['problem']}", file=sys.stderr)
    print(
        f"cached {result.cached} images ({counts}) at {result.size} px, letterboxed, into {result.out}"
        f"{reused} in {result.seconds:.1f} s"
    )
    print(f"next: cxrdx train --data {result.out} --out runs/RUN")
    return 0
