"""``cxrdx predict``: findings for chest X-ray images (PNG, JPEG, DICOM; files or folders)."""

from __future__ import annotations

import argparse
import sys

from cxrdx.jobs import predict as JOB

DESCRIPTION = (
    "Predict the 14 findings for each image. A file that cannot be read gets an error row "
    "and the exit code is 1; 0 means every image was read."
)


def render(summary: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    if summary.written is not None:
        sys.stdout.write("".join(f"{p}\n" for p in summary.written))
    elif summary.text is not None:
        sys.stdout.write(summary.text)
    failed = summary.failed
    where = f" -> {summary.target}" if config.out else ""
    if summary.n_shards > 1:
        where += (
            f"; all {summary.n_shards} parts merged into {config.out}"
            if summary.merged
            else (f"; {config.out} is written when the last of the {summary.n_shards} shards finishes")
        )
    heat = f"; heatmaps in {summary.heat_dir}" if summary.heat_dir else ""
    print(
        f"cxrdx predict: {summary.ok} image(s) predicted, {failed} failed (backend {summary.backend}){where}{heat}",
        file=sys.stderr,
    )
    if config.out and failed:  # the error rows are in FILE; say which images failed and why here too
        _print_failures(summary.failures, failed, str(summary.target))
    if summary.ood:
        print(
            f"cxrdx predict: warning: {summary.ood} image(s) OUT OF DISTRIBUTION (unlike the images the "
            'model was trained on, "in_distribution": false): their findings and calls are unreliable',
            file=sys.stderr,
        )
    for b in summary.warnings:  # the model card's banners; a table carries them itself
        print(f"cxrdx predict: WARNING: {b}", file=sys.stderr)
    if summary.backend_record:
        print(f"cxrdx predict: backend {summary.backend}: {summary.backend_record}", file=sys.stderr)
    for note in summary.notes:
        print(f"cxrdx predict: note: {note}", file=sys.stderr)
    return 1 if failed else 0


def _print_failures(failures: list, total: int, out: str) -> None:
    """List the failed images the job kept (its first MAX_FAILURES_SHOWN) with their reasons on stderr."""
    for pred in failures:
        reason = str(pred.error)
        line = reason if reason.startswith(pred.source) else f"{pred.source}: {reason}"
        print(f"cxrdx predict: failed: {line}", file=sys.stderr)
    more = total - len(failures)
    if more > 0:
        print(f"cxrdx predict: ... and {more} more (see {out})", file=sys.stderr)
