"""``export``: a checkpoint as a self-describing ONNX file (dynamic batch, probabilities out), checked against PyTorch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrdx.options import option
from cxrdx.reporter import Reporter
from cxrdx.settings import ONNX_OPSET

if TYPE_CHECKING:
    from cxrdx.inference.export import ExportReport as Result


@dataclass
class Config:
    weights: str = option(metavar="CKPT", help="cxrdx .safetensors checkpoint or a registry name")
    onnx: Path = option(metavar="OUT.onnx", help="file to write")
    opset: int = option(ONNX_OPSET, help="ONNX opset")
    no_check: bool = option(False, help="skip comparing ONNX Runtime with PyTorch")
    fold: bool = option(
        False,
        help="input N x 1 x S x S gray in [0, 1] named 'gray': the normalisation and the gray channel "
        "copies folded into the first convolution (exact; what cxrdx predict runs)",
    )


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.inference.export import export_onnx
    from cxrdx.model.pretrained import resolve_weights

    return export_onnx(
        resolve_weights(config.weights),
        config.onnx,
        opset=config.opset,
        check=not config.no_check,
        fold=config.fold,
    )
