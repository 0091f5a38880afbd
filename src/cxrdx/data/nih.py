"""NIH ChestX-ray14 label format: one ``Finding Labels`` cell per image, findings joined by ``|``.

Also used by the phantom ``Data_Entry.csv`` and any generic table with a
``Finding Labels`` column. Other sources (CheXpert, MIMIC, ...) get a module beside
this one with the same ``label_matrix`` role.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data.columns import _few, _map_unique
from cxrdx.errors import DataError, LabelError
from cxrdx.labels import FINDINGS, NO_FINDING, is_finding, parse_finding_labels

FINDING_LABELS_COLUMN = "Finding Labels"
NIH_IMAGE_COLUMN = "Image Index"
NIH_PATIENT_COLUMN = "Patient ID"


def label_matrix(path: Path, cells: pd.Series) -> np.ndarray:
    """(n, 14) uint8 in FINDINGS order from ``Finding Labels`` cells; errors name lines and unknown names."""
    blank = _map_unique(cells, lambda v: not v.strip()).astype(bool)
    if blank.any():
        rows = (np.flatnonzero(blank) + 2).tolist()  # +2: header and 1-based lines
        raise DataError(
            f"{path}: empty '{FINDING_LABELS_COLUMN}' on line(s) {_few(rows)}; "
            f"write '{NO_FINDING}' for normal images"
        )
    inverse, uniques = pd.factorize(np.asarray(cells, dtype=object), use_na_sentinel=False)
    table = np.zeros((len(uniques), len(FINDINGS)), dtype=np.uint8)
    unknown: set[str] = set()
    index = {f: i for i, f in enumerate(FINDINGS)}
    for row, text in enumerate(uniques):
        try:
            names = parse_finding_labels(text)
        except LabelError:
            unknown.update(p.strip() for p in text.split("|") if p.strip() and not is_finding(p.strip()))
            continue
        for name in names:
            table[row, index[name]] = 1
    unknown.discard(NO_FINDING)
    if unknown:
        raise LabelError(
            f"{path}: unknown finding name(s) in '{FINDING_LABELS_COLUMN}': {_few(sorted(unknown), 10)}; "
            f"known findings: {', '.join(FINDINGS)} (or '{NO_FINDING}')"
        )
    return table[inverse]


def format_name(image_col: str, patient_col: str) -> str:
    """``nih`` for NIH's own header, ``finding-labels`` for another table with a Finding Labels column."""
    return "nih" if image_col == NIH_IMAGE_COLUMN and patient_col == NIH_PATIENT_COLUMN else "finding-labels"
