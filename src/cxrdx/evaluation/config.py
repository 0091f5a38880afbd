"""``EvaluateConfig`` and ``CalibrateConfig``: every setting, its default and help text defined once (stdlib only).

``evaluation.evaluate.evaluate`` and ``evaluation.calibrate.calibrate`` read them; the flags of
``cxrdx evaluate`` and ``cxrdx calibrate`` are generated from them
(``cxrdx.cli.generate``), so ``--help`` loads none of the evaluation's numpy/pandas/torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrdx.options import option
from cxrdx.settings import BLANK_HELP, BLANK_POLICIES


@dataclass
class EvaluateConfig:
    weights: str = option(metavar="CKPT", help="a cxrdx .safetensors checkpoint")
    data: str = option(metavar="CSV_OR_CACHE", help="prepared cache folder or label CSV")
    out: str = option(metavar="REPORT_DIR", help="report folder")
    images: str | None = option(None, metavar="DIR", help="image folder for a label CSV")
    split: str = option("test", help="cache split to evaluate")
    val: str | None = option(
        None, metavar="VAL_CSV", help="validation label CSV (or cache) to choose thresholds on"
    )
    val_split: str = option("val", help="cache split for thresholds")
    val_images: str | None = option(None, metavar="DIR", help="image folder for --val (default: --images)")
    target_sensitivity: float | None = option(
        None,
        metavar="S",
        help="choose each threshold as the highest reaching this sensitivity on validation (default: Youden's J)",
    )
    tta: bool = option(False, help="average over a horizontal flip; reports the spread as uncertainty")
    ensemble: list[str] = option(
        default_factory=list, metavar="CKPT", help="more checkpoints to average with --weights"
    )
    n_boot: int = option(1000, help="bootstrap replicates")
    seed: int = option(0, help="bootstrap seed")
    batch_size: int = option(32, help="images per network call")
    device: str = option("auto", help="auto, cpu, cuda, cuda:1 ...")
    calibrate: bool = option(
        False,
        help="fit the calibration (prior + per-finding temperature) on the validation data first; stored "
        "only with --out-weights or --write-thresholds (or use `cxrdx calibrate`)",
    )
    write_thresholds: bool = option(
        False,
        help="store the chosen thresholds (and a calibration fitted here) in --weights itself, in place",
    )
    out_weights: str | None = option(
        None,
        metavar="NEW.safetensors",
        help="store them in this new checkpoint instead (same tensors); --weights is left as it is",
    )
    views: str | None = option(
        "frontal", help="views to evaluate: frontal, all (None), or a list like PA,AP (a frontal-film model)"
    )
    uncertain: str = option(
        "ignore",
        choices=("ignore", "zeros", "ones"),
        help="uncertain (-1) labels: ignore = unlabelled, zeros or ones",
    )
    blank: str = option("negative", choices=BLANK_POLICIES, help=BLANK_HELP)
    dataset: str | None = option(
        None, help="the label table's layout, when it is not detected (see `cxrdx stats --help`)"
    )
    allow_patient_overlap: bool = option(
        False,
        help="evaluate although a patient is in both --val and the test data (refused by default; noted)",
    )
    progress: bool = option(True, flag="--no-progress", help="no progress bar")


@dataclass
class CalibrateConfig:
    weights: str = option(metavar="CKPT", help="a cxrdx .safetensors checkpoint")
    data: str = option(metavar="CACHE_OR_CSV", help="prepared cache folder or validation label CSV")
    out: str = option(metavar="NEW.safetensors", help="the calibrated checkpoint to write")
    images: str | None = option(None, metavar="DIR", help="image folder for a label CSV")
    split: str = option("val", help="cache split to fit on (test is refused)")
    tta: bool = option(False, help="fit on the image and its mirror (as predict --tta)")
    views: str | None = option(
        "frontal", help="views to fit on: frontal, all, or a list like PA,AP (as `evaluate --views`)"
    )
    uncertain: str = option(
        "ignore",
        choices=("ignore", "zeros", "ones"),
        help="uncertain (-1) labels: ignore = unlabelled, zeros or ones",
    )
    batch_size: int = option(32, help="images per network call")
    device: str = option("auto", help="auto, cpu, cuda, cuda:1 ...")
    progress: bool = option(True, flag="--no-progress", help="no progress bar")
