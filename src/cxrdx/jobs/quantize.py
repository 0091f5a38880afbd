"""``quantize``: the int8 model ``predict --precision int8`` runs, kept only if validation AUROC holds.

ONNX Runtime static QDQ with per-channel weights, activation ranges from training-split images of
a prepared cache; fp32 and int8 are scored on the validation split and the int8 model is kept (in
the cxrdx cache) only if its mean AUROC is within ``max_auroc_drop`` of fp32's. The test split is
never used. A refusal is a result (``refused``), not an error: the CLI exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxrdx.options import option
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.settings import INT8_CALIBRATION_IMAGES, INT8_MAX_AUROC_DROP


@dataclass
class Config:
    weights: str = option(metavar="CKPT", help="cxrdx .safetensors checkpoint or a registry name")
    data: str = option(metavar="CACHE", help="prepared cache (cxrdx prepare) with train and val splits")
    n_calib: int = option(INT8_CALIBRATION_IMAGES, flag="--calib", help="training images to calibrate on")
    calib_split: str = option("train", help="cache split to calibrate on")
    check_split: str = option("val", help="cache split to check AUROC on")
    max_auroc_drop: float = option(
        INT8_MAX_AUROC_DROP, help="mean validation AUROC int8 may lose against fp32"
    )


@dataclass
class Result:
    report: Any = None  # cxrdx.jobs.quantize_build.QuantizeReport when the int8 model was kept
    refused: str | None = None  # why it was not (AUROC dropped too far), else None


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.jobs.quantize_build import QuantizationRefused, QuantizeConfig, quantize

    reporter = reporter_or_default(reporter, "quantize")
    library_config = QuantizeConfig(
        weights=config.weights,
        data=config.data,
        calib_split=config.calib_split,
        check_split=config.check_split,
        n_calib=config.n_calib,
        max_auroc_drop=config.max_auroc_drop,
    )
    try:
        return Result(report=quantize(library_config, log=reporter.note))
    except QuantizationRefused as exc:
        return Result(refused=str(exc))
