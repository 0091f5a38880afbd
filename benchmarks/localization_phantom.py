"""Grad-CAM localisation on phantoms: pointing game and IoU per finding, for the README.

Given a trained checkpoint and a phantom dataset (``cxrdx synth --out DIR``), computes a
Grad-CAM heatmap (layer ``class_layers.relu``) for every boxed (image, finding) pair in
``DIR/BBox_List.csv``, for that finding by name, on the image's own pixel grid, and reports:

- pointing game: the fraction of pairs whose heatmap maximum lies inside a box of that
  finding on that image (no pixel tolerance), and within half a Grad-CAM cell of one;
- mean IoU of ``heatmap >= --iou-threshold`` (default 0.5) with the union of those boxes.

Score held-out images only: pass the split CSV the model was *not* trained on with
``--labels DIR/splits/test.csv`` (its ``image`` column selects the rows).

    python benchmarks/localization_phantom.py --weights RUN/best.safetensors --data PHANTOM_DIR \\
        [--labels test.csv] [--limit 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="trained cxrdx .safetensors checkpoint")
    parser.add_argument("--data", required=True, help="phantom dataset folder (images/, BBox_List.csv)")
    parser.add_argument("--labels", help="split CSV whose images to score (default: every boxed image)")
    parser.add_argument("--limit", type=int, help="score at most this many (image, finding) pairs")
    parser.add_argument("--iou-threshold", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args(argv)

    from common import machine_line

    from cxrdx.data.boxes import read_bboxes
    from cxrdx.data.tables import read_labels
    from cxrdx.device import choose_device
    from cxrdx.errors import CxrdxError
    from cxrdx.explain.localisation import format_localisation, score_localisation
    from cxrdx.inference.predictor import Predictor

    try:
        data = Path(args.data)
        boxes = read_bboxes(data / "BBox_List.csv")
        if args.labels:
            keep = {Path(str(i)).name for i in read_labels(args.labels)["image"]}
            boxes = boxes[boxes["image"].map(lambda i: Path(str(i)).name in keep)]
        predictor = Predictor.load(args.weights, device=choose_device(args.device))
        start = time.perf_counter()
        scores = score_localisation(
            predictor, boxes, data / "images", iou_threshold=args.iou_threshold, limit=args.limit
        )
        seconds = time.perf_counter() - start
    except CxrdxError as exc:
        print(f"localization_phantom: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"# Grad-CAM localisation ({predictor.meta.architecture}, {predictor.meta.preprocessing.size} px) on {data}"
    )
    print(f"# {machine_line()}; {seconds:.1f} s")
    print(format_localisation(scores))
    total = sum(s.n for s in scores.values())
    summary = {
        "weights": args.weights,
        "data": str(data),
        "labels": args.labels,
        "iou_threshold": args.iou_threshold,
        "per_finding": {k: v.summary() for k, v in scores.items()},
        "overall_pointing_game": sum(s.hits for s in scores.values()) / total if total else None,
        "overall_pointing_game_half_cell": sum(s.cell_hits for s in scores.values()) / total
        if total
        else None,
        "overall_chance": sum(s.chance_sum for s in scores.values()) / total if total else None,
        "overall_chance_half_cell": sum(s.chance_cell_sum for s in scores.values()) / total
        if total
        else None,
        "pairs": total,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
