"""``cxrdx export``: a checkpoint as a self-describing ONNX file for fast CPU inference."""

from __future__ import annotations

import argparse

DEFAULT_OPSET = 17  # cxrdx.inference.export.DEFAULT_OPSET, spelled here so --help loads nothing heavy


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Export a cxrdx checkpoint to ONNX (dynamic batch, probabilities out, labels, size and "
        "preprocessing in the metadata) and check it against PyTorch."
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="cxrdx .safetensors checkpoint")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--no-check", action="store_true", help="skip comparing ONNX Runtime with PyTorch")


def run(args: argparse.Namespace) -> int:
    from cxrdx.inference.export import export_onnx

    report = export_onnx(args.weights, args.onnx, opset=args.opset, check=not args.no_check)
    check = (
        "not checked"
        if report.max_abs_diff is None
        else f"max |onnx - torch| = {report.max_abs_diff:.1e} on probe inputs"
    )
    print(f"wrote {report.path} (input N x C x {report.size} x {report.size}, probabilities out; {check})")
    return 0
