"""CheXNet (arnoweng/CheXNet): torchvision DenseNet121 keys, a ``Sequential(Linear, Sigmoid)`` head.

Its keys are mapped by ``importers.torchvision``; what is CheXNet's own is the output order.
"""

from __future__ import annotations

# Output order of arnoweng/CheXNet (CLASS_NAMES in its model.py) and of the Keras
# reimplementation brucechou1983/CheXNet-Keras (class_names in its config): NIH's order.
CHEXNET_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
