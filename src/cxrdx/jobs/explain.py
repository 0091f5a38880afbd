"""``explain``: Grad-CAM heatmaps per image and finding (overlay PNG + raw .npy), optional localisation scores.

Each requested finding (by name; default: the ``top_k`` most probable) gets OUT/<image>_<Finding>.png
(overlay at the image's original aspect) and .npy (raw heatmap in [0, 1] on the image's pixel grid).
With ``boxes``, each image's boxed findings are explained too and scored (pointing game, IoU).
The work is ``cxrdx.jobs.explain_maps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cxrdx.options import option
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.settings import TOP_K

MIN_PAIRS = 30  # fewer scored image/box pairs than this: the rates are an example, not a measurement


@dataclass
class Config:
    images: list[str] = option(positional=True, metavar="IMAGE", help="image files (PNG, JPEG, DICOM, ...)")
    weights: str = option(metavar="CKPT", help="a cxrdx .safetensors checkpoint")
    out: str = option(metavar="DIR", help="output folder")
    findings: list[str] = option(
        default_factory=list,
        flag="--finding",
        repeat=True,
        metavar="NAME",
        help="finding to explain (repeatable)",
    )
    top_k: int = option(TOP_K, help="without --finding: explain the k most probable")
    boxes: str | None = option(
        None,
        metavar="BBOX_CSV",
        help="box table (NIH BBox_List or a phantom BBox_List.csv): draw the boxes of each image, "
        "explain their findings too, and print pointing game and IoU per finding",
    )
    iou_threshold: float = option(0.5, help="heatmap threshold for IoU")
    device: str = option("auto", help="auto, cpu, cuda, cuda:1 ...")
    alpha: float = 0.45  # overlay opacity (not on the command line)


@dataclass
class Result:
    """Per image the findings explained (probability, the files written, scores); the scores per finding."""

    out: str
    images: list[dict[str, Any]] = field(
        default_factory=list
    )  # {"image", "findings": [{finding, probability, png, npy, ...}]}
    scores: dict[str, Any] = field(default_factory=dict)  # finding -> LocalisationScore (with boxes)
    localisation: dict[str, Any] = field(default_factory=dict)  # finding -> its summary

    @property
    def pairs(self) -> int:
        """Image/box pairs scored."""
        return sum(s.n for s in self.scores.values())

    @property
    def is_example(self) -> bool:
        """Too few pairs for a pointing-game rate to be a measurement."""
        return self.pairs < MIN_PAIRS


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.jobs.explain_maps import explain

    reporter = reporter_or_default(reporter, "explain")
    results = explain(config, warn=reporter.warn)
    return Result(config.out, results["images"], results["scores"], results["localisation"])
