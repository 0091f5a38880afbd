"""`cxrdx synth`: write a synthetic chest phantom dataset in NIH's layout and print what it holds."""

from __future__ import annotations

import argparse

from cxrdx.jobs import synth as JOB

DESCRIPTION = (
    "Write DIR/images/*.png, DIR/Data_Entry.csv and DIR/BBox_List.csv in NIH's "
    "format: frontal chest phantoms whose 14 findings and lesion boxes are known exactly."
)


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    print(format_result(result))
    return 0


def format_result(result: JOB.Result) -> str:
    """A short text summary of a written phantom dataset."""
    from cxrdx.labels import FINDINGS, NO_FINDING

    n = result.n_images
    lines = [f"wrote {n} phantoms of {result.n_patients} patients to {result.out}"]
    if result.seconds:
        lines[0] += f" in {result.seconds:.1f} s ({n / result.seconds:.0f} images/s)"
    lines.append(f"{'finding':<20}{'images':>8}{'prev.':>8}{'boxes':>8}")
    for f in FINDINGS:
        c = result.images.get(f, 0)
        lines.append(f"{f:<20}{c:>8}{c / n:>8.1%}{result.boxes.get(f, 0):>8}")
    nf = result.images.get(NO_FINDING, 0)
    lines.append(f"{NO_FINDING:<20}{nf:>8}{nf / n:>8.1%}")
    return "\n".join(lines)
