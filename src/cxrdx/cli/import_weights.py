"""`cxrdx import`: convert public DenseNet121 weights into a cxrdx checkpoint and print what was mapped."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxrdx.model.import_weights import ImportResult

# Copies of cxrdx.model.import_weights.KINDS and cxrdx.model.importers.xrv.XRV_VARIANTS' names, so that
# `cxrdx import --help` loads no torch; tests/model/test_importers.py checks they stay equal.
KINDS = ("torchvision", "chexnet", "xrv", "keras", "cxrdx")
XRV_VARIANT_NAMES = ("all", "nih", "pc", "chex", "rsna", "mimic_nb", "mimic_ch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Convert pretrained DenseNet121 weights into a cxrdx checkpoint (.safetensors + metadata). "
        "Every tensor is mapped by name and shape-checked; the label order and the preprocessing the "
        "source expects are recorded so predict/evaluate/explain/serve use it correctly."
    )
    parser.add_argument("--from", dest="kind", required=True, choices=KINDS, help="layout of SOURCE")
    parser.add_argument(
        "source", metavar="SOURCE", help="the weights file (.pth, .pth.tar, .pt, .h5, .safetensors)"
    )
    parser.add_argument("--out", required=True, metavar="CKPT", help="where to write the cxrdx checkpoint")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling of files that hold a whole pickled model; it can run code from the file",
    )
    parser.add_argument("--size", type=int, default=None, help="input size in px to record (default: 224)")
    parser.add_argument(
        "--source-labels",
        default=None,
        metavar="NAMES",
        help="comma-separated names of the source's outputs in order, if not the kind's default",
    )
    parser.add_argument(
        "--xrv-weights",
        default=None,
        metavar="NAME",
        help=f"which torchxrayvision DenseNet121 ({', '.join(XRV_VARIANT_NAMES)}) when the file name does not tell",
    )
    parser.add_argument(
        "--keras-norm",
        default=None,
        metavar="NORM",
        help="--from keras: the test-time normalisation, imagenet (default), per-image, or the training "
        "sample's MEAN,STD in 0-255 units (the course notebook's generators)",
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


def run(args: argparse.Namespace) -> int:
    from cxrdx.model.import_weights import import_weights

    result = import_weights(
        args.kind,
        args.source,
        args.out,
        trust_pickle=args.trust_pickle,
        size=args.size,
        source_labels=args.source_labels,
        xrv_weights=args.xrv_weights,
        keras_norm=args.keras_norm,
    )
    print(_summary(result))
    from cxrdx.inference.export import prepare_export_note

    prepare_export_note("import", args.out)  # so the first `cxrdx predict` is fast
    return 0
