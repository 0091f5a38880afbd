"""``cxrdx export``: a checkpoint as a self-describing ONNX file for fast CPU inference."""

from __future__ import annotations

import argparse

DEFAULT_OPSET = 17  # cxrdx.inference.export.DEFAULT_OPSET, spelled here so --help loads nothing heavy


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Export a cxrdx checkpoint to ONNX (dynamic batch, probabilities out, labels, size and "
        "preprocessing in the metadata) and check it against PyTorch."
    )
    p.add_argument(
        "--weights", required=True, metavar="CKPT", help="cxrdx .safetensors checkpoint or a registry name"
    )
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--no-check", action="store_true", help="skip comparing ONNX Runtime with PyTorch")
    p.add_argument(
        "--fold",
        action="store_true",
        help="input N x 1 x S x S gray in [0, 1] named 'gray': the normalisation and the gray channel "
        "copies folded into the first convolution (exact; what cxrdx predict runs)",
    )


def run(args: argparse.Namespace) -> int:
    from cxrdx.inference.export import export_onnx
    from cxrdx.model.pretrained import resolve_weights

    report = export_onnx(
        resolve_weights(args.weights), args.onnx, opset=args.opset, check=not args.no_check, fold=args.fold
    )
    check = (
        "not checked"
        if report.max_abs_diff is None
        else f"max |onnx - torch| = {report.max_abs_diff:.1e} on probe inputs"
    )
    n = report.size
    shape = f"gray N x 1 x {n} x {n} in [0, 1]" if args.fold else f"N x C x {n} x {n}"
    print(f"wrote {report.path} (input {shape}, probabilities out; {check})")
    return 0
