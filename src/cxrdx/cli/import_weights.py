"""`cxrdx import`: convert public DenseNet121 weights into a cxrdx checkpoint and print what was mapped."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cxrdx.jobs import import_weights as JOB

if TYPE_CHECKING:
    from cxrdx.model.import_weights import ImportResult

DESCRIPTION = (
    "Convert pretrained DenseNet121 weights into a cxrdx checkpoint (.safetensors + metadata). "
    "Every tensor is mapped by name and shape-checked; the label order and the preprocessing the "
    "source expects are recorded so predict/evaluate/explain/serve use it correctly."
)


def _summary(result: ImportResult) -> str:
    from cxrdx.model.checkpoint import is_init_only

    meta = result.meta
    src = meta.source
    pre = meta.preprocessing
    lines = [
        f"imported {src.get('kind')} weights from {src.get('file', '?')} -> {result.out}",
        f"  sha256: {src.get('sha256', '?')}",
        f"  network: {meta.architecture}, {meta.in_channels} input channel(s), BatchNorm eps {meta.bn_eps:g}, "
        f"{result.mapped_tensors} tensors mapped by name, every shape checked",
        f"  input: {pre.describe()}",
    ]
    if src.get("label_mapping"):
        pairs = ", ".join(f"{name}<-{i}" for name, i in src["label_mapping"].items())
        lines.append(f"  outputs ({len(meta.labels)}, ours <- source index): {pairs}")
    if src.get("dropped_outputs"):
        lines.append(f"  dropped source outputs: {', '.join(src['dropped_outputs'])}")
    if meta.thresholds:
        lines.append(f"  thresholds: {len(meta.thresholds)} kept ({meta.threshold_method})")
    for note in result.notes:
        lines.append(f"  note: {note}")
    if is_init_only(meta):
        lines.append(f"next: train on it with `cxrdx train --init {result.out} ...` (it cannot predict yet)")
    else:
        lines.append(
            f"next: check it on your own test split with `cxrdx evaluate --weights {result.out} --data DATA "
            f"--out REPORT_DIR` (which can also choose thresholds), then `cxrdx predict --weights {result.out} IMAGE`"
        )
    return "\n".join(lines)


def render(result: ImportResult, config: JOB.Config, args: argparse.Namespace) -> int:
    print(_summary(result))
    return 0
