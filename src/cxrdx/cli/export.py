"""``cxrdx export``: a checkpoint as a self-describing ONNX file for fast CPU inference."""

from __future__ import annotations

import argparse

from cxrdx.jobs import export as JOB

DESCRIPTION = (
    "Export a cxrdx checkpoint to ONNX (dynamic batch, probabilities out, labels, size and "
    "preprocessing in the metadata) and check it against PyTorch."
)


def render(report, config: JOB.Config, args: argparse.Namespace) -> int:
    check = (
        "not checked"
        if report.max_abs_diff is None
        else f"max |onnx - torch| = {report.max_abs_diff:.1e} on probe inputs"
    )
    n = report.size
    shape = f"gray N x 1 x {n} x {n} in [0, 1]" if config.fold else f"N x C x {n} x {n}"
    print(f"wrote {report.path} (input {shape}, probabilities out; {check})")
    return 0
