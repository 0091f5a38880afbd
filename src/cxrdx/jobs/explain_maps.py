"""The work of the explain job (``cxrdx.jobs.explain``): Grad-CAM heatmaps and overlays per image and finding.

It loads a Predictor (inference), whose prediction of each image keeps the class activation maps
(``capture_maps``: the heatmaps then cost no network pass beyond the prediction's, on the fast
backend; cxrdx.inference.heatmaps), and uses explain/ for the overlays and the one
localisation scorer; explain/ itself never imports inference. It warns and burns in what
``cxrdx predict`` says: the model card's banners, and OUT OF DISTRIBUTION per image
(``formats.overlay_caveats``). Heavy at import (numpy, the
predictor): ``cxrdx.jobs.explain`` holds the light Config and imports this inside ``run``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cxrdx.data.boxes import read_bboxes
from cxrdx.device import inference_device
from cxrdx.errors import ConfigError, CxrdxError, DataError
from cxrdx.explain.localisation import Box, LocalisationScore, group_boxes, half_cell_tolerance
from cxrdx.explain.overlay import overlay_png, overlay_title
from cxrdx.inference.formats import ood_warning, overlay_caveats
from cxrdx.inference.heatmaps import capture_maps
from cxrdx.inference.predictor import Predictor
from cxrdx.labels import canonical_list


def explain(
    config, log: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None
) -> dict:
    """Heatmaps (.npy) and overlays (.png) per image and finding; localisation scores if boxes are given.

    ``log`` gets one line per heatmap written and ``warn`` one per skipped image (the CLI
    writes them to stdout / stderr). The localisation scores are in the result under
    ``"scores"`` (LocalisationScore objects) and ``"localisation"`` (their summaries).
    """
    log = log or (lambda _line: None)
    warn = warn or (lambda _line: None)

    if config.top_k < 1:
        raise ConfigError(f"`top_k` must be at least 1, got {config.top_k}")
    if not 0.0 < config.iou_threshold <= 1.0:
        raise ConfigError(f"`iou_threshold` must be in (0, 1], got {config.iou_threshold}")
    predictor = Predictor.load(config.weights, device=inference_device(config.device))
    capture_maps(predictor)  # the prediction's pass also gives every finding's map
    requested = canonical_list(config.findings) if config.findings else []
    not_output = [f for f in requested if f not in predictor.labels]
    if not_output:
        raise ConfigError(
            f"`findings` {', '.join(not_output)}: this model only outputs {', '.join(predictor.labels)}"
        )
    groups: dict[tuple[str, str], list[Box]] = {}
    if config.boxes:
        groups = group_boxes(read_bboxes(config.boxes))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = predictor.thresholds or {}
    from cxrdx.model.card import banners

    for banner in banners(predictor.meta):  # the model card's warnings, as `cxrdx predict` prints them
        warn(banner)
    ood = predictor.ood
    results: dict = {"images": [], "localisation": {}}
    scores: dict[str, LocalisationScore] = {}
    failures = 0
    for item in config.images:
        try:
            image, _ = predictor.read(item)
        except CxrdxError as exc:
            warn(f"skipped {exc}")
            failures += 1
            continue
        pred = predictor.predict([image], batch_size=1, workers=0)[0]  # one pass: findings and the OOD gate
        by_name = dict(pred.probabilities)
        unreliable = ood_warning(pred, None if ood is None else ood.threshold)
        if unreliable:
            warn(f"{item}: {unreliable}")
        caveats = overlay_caveats(predictor, pred)
        name = Path(item).name
        boxed = sorted({f for (img, f) in groups if img == name and f in predictor.labels})
        findings = list(requested) or [
            f for f, _ in sorted(by_name.items(), key=lambda kv: -kv[1])[: config.top_k]
        ]
        findings += [f for f in boxed if f not in findings]
        entry = {"image": str(item), "findings": []}
        for finding in findings:
            heatmap = predictor.explain(image, finding)
            stem = f"{Path(item).stem}_{finding}"
            np.save(out / f"{stem}.npy", heatmap.astype(np.float32))
            boxes = groups.get((name, finding), [])
            overlay_png(
                image,
                heatmap,
                out / f"{stem}.png",
                overlay_title(finding, by_name[finding], thresholds.get(finding)),
                boxes,
                caveats=caveats,
            )
            record = {
                "finding": finding,
                "probability": by_name[finding],
                "in_distribution": pred.in_distribution,
                "png": f"{stem}.png",
                "npy": f"{stem}.npy",
            }
            if boxes:
                score = scores.setdefault(finding, LocalisationScore(finding))
                # The "within half a cell" column needs the half-cell tolerance for this model's input size.
                size = predictor.meta.preprocessing.size
                tolerance = half_cell_tolerance(heatmap.shape, size)
                hit, iou = score.add(name, heatmap, boxes, config.iou_threshold, size, tolerance)
                record |= {"pointing_game": hit, "iou": iou}
            entry["findings"].append(record)
            log(f"{item}: {finding} p={by_name[finding]:.3f} -> {out / (stem + '.png')}")
        results["images"].append(entry)
    if failures == len(config.images):
        raise DataError(f"none of the {failures} image(s) could be read; see the messages above")
    results["scores"] = scores
    if config.boxes:
        results["localisation"] = {k: v.summary() for k, v in scores.items()}
    return results
