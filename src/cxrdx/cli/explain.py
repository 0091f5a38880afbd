"""``cxrdx explain``: Grad-CAM heatmaps per finding (overlay PNG + raw .npy), optional localisation scores."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrdx.jobs import explain as JOB

DESCRIPTION = (
    "Grad-CAM on the last DenseNet feature layer for each requested "
    "finding by name (default: the top-k findings by probability). Writes OUT/<image>_<Finding>.png "
    "(overlay at the image's original aspect) and .npy (raw heatmap in [0, 1] on the image's pixel grid)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no line per overlay written (the table is still printed)"
    )


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    from cxrdx.explain.localisation import format_localisation

    if not args.quiet:
        for entry in result.images:
            for r in entry["findings"]:
                print(
                    f"{entry['image']}: {r['finding']} p={r['probability']:.3f} -> {Path(config.out) / r['png']}"
                )
    if config.boxes:
        if result.scores:
            print(format_localisation(result.scores))
            if result.is_example:
                print(
                    f"note: only {result.pairs} image/box pair(s) scored: an example, not a measurement; a pointing "
                    f"game rate needs at least {JOB.MIN_PAIRS} pairs: pass more images that have boxes"
                )
        else:
            print(f"no boxes in {config.boxes} for these images and this model's findings")
    return 0
