"""The CheXNet reference column: Rajpurkar et al. 2017 per-class AUROCs.

Labelled as a random-split reference: their split differs from the official
patient-wise one, so it is a point of reference, not a like-for-like comparison.
"""

from __future__ import annotations

CHEXNET_AUROC: dict[str, float] = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Consolidation": 0.7901,
    "Edema": 0.8878,
    "Effusion": 0.8638,
    "Emphysema": 0.9371,
    "Fibrosis": 0.8047,
    "Hernia": 0.9164,
    "Infiltration": 0.7345,
    "Mass": 0.8676,
    "Nodule": 0.7802,
    "Pleural_Thickening": 0.8062,
    "Pneumonia": 0.7680,
    "Pneumothorax": 0.8887,
}
CHEXNET_LABEL = "CheXNet (Rajpurkar 2017), random split reference \u2014 not the same test set"
