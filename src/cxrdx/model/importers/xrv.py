"""torchxrayvision DenseNet121s: 18 outputs in xrv's own order, 1-channel [-1024, 1024] input.

Each published variant was trained on a subset of the 18 outputs; the rest are
untrained and are dropped. Operating thresholds come from the file's ``op_threshs``
buffer, else from torchxrayvision's published values for the variant.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cxrdx.errors import CheckpointError, ConfigError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.labels import canonical, is_nih_finding
from cxrdx.model.importers.registry import Importer, Request, SourceWeights, register
from cxrdx.model.importers.torchvision import read_torch, strip_prefixes

# torchxrayvision's DenseNet outputs (xrv.datasets.default_pathologies / DenseNet.targets).
XRV_PATHOLOGIES = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
    "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
    "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)  # fmt: skip
_NAN = math.nan
# Which of the 18 outputs each published xrv DenseNet121 was trained on, and its operating
# points (sigmoid value at which xrv's op_norm maps to 0.5), as published in
# torchxrayvision's models.py ``model_urls``. Keyed by the release file name's prefix.
XRV_VARIANTS: dict[str, dict] = {
    "all": {
        "file_prefix": "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121",
        "present": tuple(range(18)),
        "op_threshs": (0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358,
                       0.010060724, 0.103246614, 0.056810737, 0.026791653, 0.050318155, 0.023985857,
                       0.01939503, 0.042889766, 0.053369623, 0.035975814, 0.20204692, 0.05015312),
    },
    "nih": {
        "file_prefix": "nih-densenet121",
        "present": tuple(range(14)),
        "op_threshs": (0.039117552, 0.0034529066, 0.11396341, 0.0057298196, 0.00045666535, 0.0018880932,
                       0.012037827, 0.038744126, 0.0037213727, 0.014730946, 0.016149804, 0.054241467,
                       0.037198864, 0.0004403434, _NAN, _NAN, _NAN, _NAN),
    },
    "pc": {
        "file_prefix": "pc-densenet121",
        "present": (*range(14), 15),
        "op_threshs": (0.031012505, 0.013347598, 0.081435576, 0.001262615, 0.002587246, 0.0035944257,
                       0.0023071, 0.055412333, 0.044385884, 0.042766232, 0.043258056, 0.037629247,
                       0.005658899, 0.0091741895, _NAN, 0.026507627, _NAN, _NAN),
    },
    "chex": {
        "file_prefix": "chex-densenet121",
        "present": (0, 1, 3, 4, 7, 8, 10, 14, 15, 16, 17),
        "op_threshs": (0.1988969, 0.05710573, _NAN, 0.0531293, 0.1435217, _NAN, _NAN, 0.27212676,
                       0.07749717, _NAN, 0.19712369, _NAN, _NAN, _NAN, 0.09932402, 0.09273402,
                       0.3270967, 0.10888247),
    },
    "rsna": {
        "file_prefix": "kaggle-densenet121",
        "present": (8, 16),
        "op_threshs": (*[_NAN] * 8, 0.13486601, *[_NAN] * 7, 0.13511065, _NAN),
    },
    "mimic_nb": {
        "file_prefix": "mimic_nb-densenet121",
        "present": (0, 1, 3, 4, 7, 8, 10, 14, 15, 16, 17),
        "op_threshs": (0.08558747, 0.011884617, _NAN, 0.0040595434, 0.010733786, _NAN, _NAN, 0.118761964,
                       0.022924708, _NAN, 0.06358637, _NAN, _NAN, _NAN, 0.022143636, 0.017476924,
                       0.1258702, 0.014020768),
    },
    "mimic_ch": {
        "file_prefix": "mimic_ch-densenet121",
        "present": (0, 1, 3, 4, 7, 8, 10, 14, 15, 16, 17),
        "op_threshs": (0.09121389, 0.010573786, _NAN, 0.005023008, 0.003698257, _NAN, _NAN, 0.08001232,
                       0.037242252, _NAN, 0.05006329, _NAN, _NAN, _NAN, 0.019866971, 0.03823637,
                       0.11303808, 0.0069147074),
    },
}  # fmt: skip


def xrv_preprocessing(size: int | None) -> Preprocessing:
    """torchxrayvision's own pipeline: ``normalize(img, maxval)`` to [-1024, 1024] (8-bit / 255,
    16-bit / 65535: what cxrdx's reader gives in [0, 1]), ``XRayCenterCrop`` (the centred square of
    the shorter side), ``XRayResizer`` (scikit-image's anti-aliased resize in float, edges 0 in
    [-1024, 1024]), no rounding to 8 bits; one channel; the model normalises nothing itself."""
    return Preprocessing(
        size=size or 224, channels=1, pixel_range=(-1024.0, 1024.0), mean=(0.0,), std=(1.0,),
        fit="center_crop", resize="skimage", bits=None,
    )  # fmt: skip


def xrv_variant(name: str | None, path: Path) -> str | None:
    if name:
        key = name.removeprefix("densenet121-res224-")
        key = {"kaggle": "rsna"}.get(key, key)
        if key not in XRV_VARIANTS:
            raise ConfigError(f"--xrv-weights {name!r} is unknown; known: {', '.join(XRV_VARIANTS)}")
        return key
    file = path.name
    matches = [k for k, v in XRV_VARIANTS.items() if file.startswith(v["file_prefix"])]
    return max(matches, key=lambda k: len(XRV_VARIANTS[k]["file_prefix"])) if matches else None


def xrv_labels(
    state: dict[str, torch.Tensor],
    model_obj: object,
    variant: str | None,
    given: list[str] | None,
    source: str,
) -> tuple[list[str], list[float] | None, list[str]]:
    """(18-entry source label list, '' for untrained outputs; op thresholds or None; notes)."""
    notes: list[str] = []
    labels: list[str] | None = given
    if labels is None and variant is not None:
        present = set(XRV_VARIANTS[variant]["present"])
        labels = [name if i in present else "" for i, name in enumerate(XRV_PATHOLOGIES)]
        notes.append(f"torchxrayvision weights {variant!r} (densenet121-res224-{variant})")
    if labels is None:
        attrs = getattr(model_obj, "__dict__", {})
        for attr in ("targets", "pathologies"):
            value = attrs.get(attr)
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                labels = list(value)
                notes.append(f"output names read from the model's {attr!r} attribute")
                break
    if labels is None:
        raise CheckpointError(
            f"{source}: cannot tell which torchxrayvision weights this is from the file name; give "
            f"--xrv-weights NAME (one of {', '.join(XRV_VARIANTS)}, e.g. nih for densenet121-res224-nih) or "
            "--source-labels with the 18 output names in order"
        )
    op = state.get("op_threshs")
    thresholds: list[float] | None = None
    if isinstance(op, torch.Tensor) and op.numel() == len(labels):
        thresholds = [float(v) for v in op.flatten()]
        notes.append("operating thresholds taken from the file's op_threshs buffer")
    elif variant is not None:
        thresholds = list(XRV_VARIANTS[variant]["op_threshs"])
        notes.append(f"operating thresholds: torchxrayvision's published op_threshs for {variant!r}")
    return labels, thresholds, notes


def xrv_thresholds(src_labels: list[str], op: list[float]) -> dict[str, float]:
    """Our findings' operating thresholds (untrained or NaN entries left out)."""
    thresholds: dict[str, float] = {}
    for i, name in enumerate(src_labels):
        if name and is_nih_finding(name) and not math.isnan(op[i]):
            thresholds[canonical(name)] = float(op[i])
    return thresholds


def _read(request: Request) -> SourceWeights:
    weights, state, model_obj = read_torch(request, IMPORTER.ignore)
    variant = xrv_variant(request.xrv_weights, request.path)
    stripped = {strip_prefixes(k): v for k, v in state.items()}
    labels, op, notes = xrv_labels(stripped, model_obj, variant, request.source_labels, str(request.path))
    weights.labels = labels
    weights.notes += notes
    if len(labels) == len(XRV_PATHOLOGIES):
        weights.output_names = XRV_PATHOLOGIES
    if op is not None:
        weights.thresholds = xrv_thresholds(labels, op)
        weights.threshold_method = "torchxrayvision op_threshs (positive when probability >= threshold)"
    return weights


IMPORTER = register(
    Importer(
        name="xrv",
        title="torchxrayvision",
        suffixes=(".pt", ".pth"),
        detect=lambda path: xrv_variant(None, path) is not None,
        preprocessing=lambda request: xrv_preprocessing(request.size),
        read=_read,
        ignore=("op_threshs",),
        options=("xrv_weights",),
    )
)
