"""NIH ChestX-ray14 label format: one ``Finding Labels`` cell per image, findings joined by ``|``.

Also used by the phantom ``Data_Entry.csv`` and any table with a ``Finding Labels`` column
(the reader registered as ``nih``; the ``generic`` reader decodes such a column the same way).
Other sources (CheXpert, MIMIC, ...) get a module beside this one that registers its reader.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data.columns import Parsed, _few, _map_unique, _pick, read_flat
from cxrdx.data.readers import ReadOptions, register
from cxrdx.errors import DataError, LabelError
from cxrdx.labels import FINDINGS, NO_FINDING, _key, is_nih_finding, parse_finding_labels

FINDING_LABELS_COLUMN = "Finding Labels"
NIH_IMAGE_COLUMN = "Image Index"
NIH_PATIENT_COLUMN = "Patient ID"
MIXED_NO_FINDING_MODES = ("error", "keep")


def _is_mixed(text: str) -> bool:
    """``No Finding`` joined with anything else (``No Finding|Effusion``): contradictory."""
    parts = [p.strip() for p in str(text).split("|") if p.strip()]
    return len(parts) > 1 and any(_key(p) == _key(NO_FINDING) for p in parts)


def label_matrix(
    path: Path,
    cells: pd.Series,
    image_ids: pd.Series | np.ndarray | None = None,
    mixed_no_finding: str = "error",
) -> np.ndarray:
    """(n, 14) uint8 in FINDINGS order from ``Finding Labels`` cells; errors name lines and unknown names.

    A cell mixing ``No Finding`` with findings is an error (``mixed_no_finding="error"``) or,
    with ``"keep"``, keeps the findings, drops the ``No Finding`` token and warns with the count.
    """
    if mixed_no_finding not in MIXED_NO_FINDING_MODES:
        raise ValueError(
            f"mixed_no_finding must be one of {', '.join(map(repr, MIXED_NO_FINDING_MODES))}, "
            f"not {mixed_no_finding!r}"
        )
    blank = _map_unique(cells, lambda v: not v.strip()).astype(bool)
    if blank.any():
        rows = (np.flatnonzero(blank) + 2).tolist()  # +2: header and 1-based lines
        raise DataError(
            f"{path}: empty '{FINDING_LABELS_COLUMN}' on line(s) {_few(rows)}; "
            f"write '{NO_FINDING}' for normal images"
        )
    inverse, uniques = pd.factorize(np.asarray(cells, dtype=object), use_na_sentinel=False)
    mixed_unique = np.fromiter((_is_mixed(t) for t in uniques), dtype=bool, count=len(uniques))
    mixed = mixed_unique[inverse]
    if mixed.any():
        rows = np.flatnonzero(mixed)
        if mixed_no_finding == "error":
            ids = np.asarray(image_ids, dtype=object) if image_ids is not None else None
            shown = [
                f"line {r + 2}" + (f" (image {ids[r]!s})" if ids is not None else "") + f": {cells.iloc[r]!r}"
                for r in rows[:5]
            ]  # +2: header and 1-based CSV lines
            more = f", ... ({len(rows)} rows in all)" if len(rows) > 5 else ""
            raise LabelError(
                f"{path}: {len(rows)} '{FINDING_LABELS_COLUMN}' cell(s) mix '{NO_FINDING}' with findings, "
                f"which contradicts itself; CSV {'; '.join(shown)}{more}. Fix the cell(s): write either "
                f"'{NO_FINDING}' alone or only the findings; or pass mixed_no_finding=\"keep\" "
                f"(CLI: --keep-mixed-no-finding) to keep the findings and drop the '{NO_FINDING}' token"
            )
        warnings.warn(
            f"{path}: {len(rows)} row(s) mix '{NO_FINDING}' with findings in '{FINDING_LABELS_COLUMN}' "
            f"(first at CSV line {rows[0] + 2}: {cells.iloc[rows[0]]!r}); kept their findings and dropped "
            f"the '{NO_FINDING}' token",
            UserWarning,
            stacklevel=3,
        )
    table = np.zeros((len(uniques), len(FINDINGS)), dtype=np.uint8)
    unknown: set[str] = set()
    index = {f: i for i, f in enumerate(FINDINGS)}
    for row, text in enumerate(uniques):
        if mixed_unique[row]:  # only reached with "keep"
            text = "|".join(p for p in str(text).split("|") if p.strip() and _key(p) != _key(NO_FINDING))
        try:
            names = parse_finding_labels(text)
        except LabelError:
            unknown.update(p.strip() for p in text.split("|") if p.strip() and not is_nih_finding(p.strip()))
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


def decode(path: Path, cells: pd.Series, images: np.ndarray, mixed_no_finding: str, columns: tuple[str, str]):
    """(finding -> float32 codes, format name) from ``Finding Labels`` cells; ``columns``: (image, patient)."""
    matrix = label_matrix(path, cells.astype(str), images, mixed_no_finding=mixed_no_finding)
    labels = {f: matrix[:, i].astype(np.float32) for i, f in enumerate(FINDINGS)}
    return labels, format_name(*columns)


def read(path: Path, raw: pd.DataFrame, options: ReadOptions) -> Parsed:
    col = _pick([str(c) for c in raw.columns], (FINDING_LABELS_COLUMN,))
    return read_flat(
        path,
        raw,
        col is not None,
        f"a '{FINDING_LABELS_COLUMN}' column (a table of finding columns is --dataset generic)",
        lambda images, image_col, patient_col: decode(
            path, raw[col], images, options.mixed_no_finding, (image_col, patient_col)
        ),
    )


def detect(path: Path, columns: list[str]) -> bool:
    return _pick(columns, (FINDING_LABELS_COLUMN,)) is not None


register("nih", detect=detect, read=read, order=60, layout="NIH (Image Index, Finding Labels, Patient ID)")
