"""`cxrdx prepare`: decode and resize images once into a memory-mapped cache for training."""

from __future__ import annotations

import argparse
import sys

from cxrdx.cli.label_options import add_mixed_no_finding, mixed_no_finding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Decode every image listed in the label CSV(s) once, letterbox it to SIZE x SIZE "
        "(scale the longer side, pad with black, so no anatomy is cropped), and store uint8 pixels in "
        "OUT/images.npy with OUT/index.csv (labels + row + split = CSV stem) and OUT/cache.json. "
        "Interrupted? Rerun the same command: finished images are kept. Images listed but not found "
        "stop the job (listed in OUT/not_cached.csv) unless --allow-missing; unreadable images are "
        "skipped, counted and listed in OUT/not_cached.csv and OUT/cache.json."
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        required=True,
        metavar="CSV",
        help="label table(s), e.g. the train.csv val.csv test.csv written by `cxrdx split`",
    )
    parser.add_argument("--images", metavar="DIR", help="folder the image names in the CSVs are relative to")
    parser.add_argument("--size", type=int, default=320, help="square side in pixels (default 320)")
    parser.add_argument("--out", required=True, metavar="CACHE", help="cache folder to create (or resume)")
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: CPU count, at most 8)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache in --out")
    parser.add_argument(
        "--allow-patient-overlap",
        action="store_true",
        help="cache splits that share a patient (refused by default; recorded in cache.json)",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="cache the images that are there when some listed ones are not (e.g. a partial download)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_mixed_no_finding(parser)


def run(args: argparse.Namespace) -> int:
    from cxrdx.data.prepare import NOT_CACHED_FILE, SHOWN_NAMES, prepare_cache

    result = prepare_cache(
        labels=args.labels,
        out=args.out,
        size=args.size,
        images=args.images,
        workers=args.workers,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        mixed_no_finding=mixed_no_finding(args),
        allow_patient_overlap=args.allow_patient_overlap,
        allow_missing=args.allow_missing,
    )
    if result.leakage:
        print(
            f"WARNING: {result.leakage}; allowed by --allow-patient-overlap (recorded in the cache)",
            file=sys.stderr,
        )
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
