"""`cxrdx synth`: write a synthetic chest phantom dataset in NIH's layout and print what it holds."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cxrdx.labels import FINDINGS, NO_FINDING


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write DIR/images/*.png, DIR/Data_Entry.csv and DIR/BBox_List.csv in NIH's "
        "format: frontal chest phantoms whose 14 findings and lesion boxes are known exactly."
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument(
        "--prevalence-scale",
        type=float,
        default=1.0,
        help="multiply every finding's prevalence (default 1.0: each 4-11%%, ~45%% No Finding)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")


def run(args: argparse.Namespace) -> int:
    from cxrdx.phantom.config import PhantomConfig
    from cxrdx.phantom.dataset import write_dataset

    config = PhantomConfig(prevalence_scale=args.prevalence_scale)
    t0 = time.perf_counter()
    out = write_dataset(
        args.out, args.n, args.size, args.seed, config, args.workers, overwrite=args.overwrite, progress=True
    )
    elapsed = time.perf_counter() - t0
    print(summarize(out, elapsed))
    return 0


def summarize(out: Path, elapsed: float | None = None) -> str:
    """A short text summary of a written phantom dataset."""
    import pandas as pd

    entry = pd.read_csv(out / "Data_Entry.csv")
    boxes = pd.read_csv(out / "BBox_List.csv")
    n = len(entry)
    labels = entry["Finding Labels"].str.split("|").explode()
    counts = labels.value_counts()
    lines = [f"wrote {n} phantoms of {entry['Patient ID'].nunique()} patients to {out}"]
    if elapsed:
        lines[0] += f" in {elapsed:.1f} s ({n / elapsed:.0f} images/s)"
    lines.append(f"{'finding':<20}{'images':>8}{'prev.':>8}{'boxes':>8}")
    box_counts = boxes["Finding Label"].value_counts()
    for f in FINDINGS:
        c = int(counts.get(f, 0))
        lines.append(f"{f:<20}{c:>8}{c / n:>8.1%}{int(box_counts.get(f, 0)):>8}")
    nf = int(counts.get(NO_FINDING, 0))
    lines.append(f"{NO_FINDING:<20}{nf:>8}{nf / n:>8.1%}")
    return "\n".join(lines)
