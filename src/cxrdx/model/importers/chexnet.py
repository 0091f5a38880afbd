"""CheXNet (arnoweng/CheXNet): torchvision DenseNet121 keys, a ``Sequential(Linear, Sigmoid)`` head.

Its keys are mapped by ``importers.torchvision``; what is CheXNet's own is the output order and
its test script's ten-crop.
"""

from __future__ import annotations

from cxrdx.model.importers.registry import Importer, Request, SourceWeights, register
from cxrdx.model.importers.torchvision import imagenet_preprocessing, read_torch

# Output order of arnoweng/CheXNet (CLASS_NAMES in its model.py) and of the Keras
# reimplementation brucechou1983/CheXNet-Keras (class_names in its config): NIH's order.
CHEXNET_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
CHEXNET_FILE = "model.pth.tar"  # the checkpoint arnoweng/CheXNet ships


def _read(request: Request) -> SourceWeights:
    weights, _state, _obj = read_torch(request, IMPORTER.ignore)
    weights.labels = request.source_labels or list(CHEXNET_LABELS)
    return weights


IMPORTER = register(
    Importer(
        name="chexnet",
        title="CheXNet (arnoweng/CheXNet)",
        suffixes=(".pth.tar", ".pth", ".pt"),
        detect=lambda path: path.name == CHEXNET_FILE,
        preprocessing=lambda request: imagenet_preprocessing(request.size, crops=10),  # its test: TenCrop
        read=_read,
    )
)
