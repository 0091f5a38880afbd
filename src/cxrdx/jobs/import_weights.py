"""``import``: public DenseNet121 weights (torchvision, CheXNet, torchxrayvision, Keras, cxrdx) as a cxrdx checkpoint.

Every tensor is mapped by name and shape-checked; the label order and the preprocessing the
source expects are recorded so predict/evaluate/explain/serve feed it the input it was trained on.
The result is ``cxrdx.model.import_weights.ImportResult``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrdx.options import option
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.settings import IMPORT_SOURCES, XRV_VARIANTS

if TYPE_CHECKING:
    from cxrdx.model.import_weights import ImportResult as Result


@dataclass
class Config:
    source: str = option(
        positional=True, metavar="SOURCE", help="the weights file (.pth, .pth.tar, .pt, .h5, .safetensors)"
    )
    out: Path = option(metavar="CKPT", help="where to write the cxrdx checkpoint")
    kind: str | None = option(
        None,
        flag="--from",
        choices=IMPORT_SOURCES,
        help="layout of SOURCE (default: recognised from the file's name or first bytes: torchvision's and "
        "torchxrayvision's release names, CheXNet's model.pth.tar, Keras HDF5, a cxrdx checkpoint)",
    )
    trust_pickle: bool = option(
        False,
        help="allow full unpickling of files that hold a whole pickled model; it can run code from the file",
    )
    image_size: int | None = option(
        None, aliases=("--size",), help="input size in px to record (default: the source's, 224)"
    )
    source_labels: str | None = option(
        None,
        metavar="NAMES",
        help="comma-separated names of the source's outputs in order, if not the kind's default",
    )
    xrv_weights: str | None = option(
        None,
        metavar="NAME",
        help=f"which torchxrayvision DenseNet121 ({', '.join(XRV_VARIANTS)}) when the file name does not tell",
    )
    keras_norm: str | None = option(
        None,
        metavar="NORM",
        help="--from keras: the test-time normalisation, imagenet (default), per-image, or the training "
        "sample's MEAN,STD in 0-255 units (the course notebook's generators)",
    )


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.inference.on_write import prepare_export_note
    from cxrdx.model.import_weights import import_weights

    reporter = reporter_or_default(reporter, "import")
    result = import_weights(
        config.kind,
        config.source,
        config.out,
        trust_pickle=config.trust_pickle,
        size=config.image_size,
        source_labels=config.source_labels,
        xrv_weights=config.xrv_weights,
        keras_norm=config.keras_norm,
    )
    prepare_export_note("import", config.out, reporter)  # so the first `cxrdx predict` is fast
    return result
