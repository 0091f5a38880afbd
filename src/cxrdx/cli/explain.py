"""``cxrdx explain``: Grad-CAM heatmaps per finding (overlay PNG + raw .npy), optional localisation scores."""

from __future__ import annotations

import argparse
import sys

GRADCAM_LAYER = "class_layers.relu"  # cxrdx.model.GRADCAM_LAYER, spelled here so --help loads no torch
MIN_PAIRS = 30  # fewer scored image/box pairs than this: the rates are an example, not a measurement


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        f"Grad-CAM on the last DenseNet feature layer ({GRADCAM_LAYER}) for each requested "
        "finding by name (default: the top-k findings by probability). Writes OUT/<image>_<Finding>.png "
        "(overlay at the image's original aspect) and .npy (raw heatmap in [0, 1] on the image's pixel grid)."
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, DICOM, ...)")
    p.add_argument("--weights", required=True, metavar="CKPT", help="a cxrdx .safetensors checkpoint")
    p.add_argument(
        "--finding", action="append", default=[], metavar="NAME", help="finding to explain (repeatable)"
    )
    p.add_argument(
        "--top-k", type=int, default=3, help="without --finding: explain the k most probable (default 3)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--boxes",
        metavar="BBOX_CSV",
        help="box table (NIH BBox_List or a phantom BBox_List.csv): draw the boxes of each image, "
        "explain their findings too, and print pointing game and IoU per finding",
    )
    p.add_argument("--iou-threshold", type=float, default=0.5, help="heatmap threshold for IoU (default 0.5)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no line per overlay written (the table is still printed)"
    )


def run(args: argparse.Namespace) -> int:
    from cxrdx.explain.localisation import format_localisation
    from cxrdx.inference.explain_job import ExplainConfig, explain

    config = ExplainConfig(
        weights=args.weights,
        images=list(args.images),
        out=args.out,
        findings=list(args.finding),
        top_k=args.top_k,
        boxes=args.boxes,
        device=args.device,
        iou_threshold=args.iou_threshold,
    )
    log = (lambda line: None) if args.quiet else print
    results = explain(config, log=log, warn=lambda line: print(line, file=sys.stderr))
    if config.boxes:
        if results["scores"]:
            print(format_localisation(results["scores"]))
            pairs = sum(s.n for s in results["scores"].values())
            if pairs < MIN_PAIRS:
                print(
                    f"note: only {pairs} image/box pair(s) scored: an example, not a measurement; a pointing "
                    f"game rate needs at least {MIN_PAIRS} pairs: pass more images that have boxes"
                )
        else:
            print(f"no boxes in {config.boxes} for these images and this model's findings")
    return 0
