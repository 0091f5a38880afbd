"""Lesion boxes: NIH's ``BBox_List_2017.csv``, a phantom ``BBox_List.csv``, or VinDr-CXR's ``train.csv``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data.columns import _few, _pick, _read_csv
from cxrdx.errors import DataError, LabelError
from cxrdx.labels import ALL_FINDINGS, canonical, is_finding

BOX_COLUMNS = ("image", "finding", "x", "y", "w", "h")
_BOX_ALIASES = {
    "image": ("Image Index", "image"),
    "finding": ("Finding Label", "finding"),
    "x": ("Bbox [x", "x"),
    "y": ("y",),
    "w": ("w",),
    "h": ("h]", "h"),
}


def read_bboxes(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Read NIH's ``BBox_List_2017.csv(.gz)`` or a phantom ``BBox_List.csv``.

    Returns ``image``, ``finding`` (canonical: NIH's ``Infiltrate`` becomes
    ``Infiltration``), ``x``, ``y``, ``w``, ``h`` (float pixels). A table with a
    header and no boxes is valid (a phantom set with no findings).
    """
    path = Path(csv_path)
    raw = _read_csv(path, "box table")
    columns = [str(c) for c in raw.columns if not str(c).startswith("Unnamed")]
    from cxrdx.data import vindr

    if all(_pick(columns, (c,)) for c in vindr.SIGNATURE):  # VinDr-CXR: boxes per reader, kept all
        return vindr.read_boxes(path, raw)
    picked = {key: _pick(columns, names) for key, names in _BOX_ALIASES.items()}
    missing = [key for key, col in picked.items() if col is None]
    if missing:
        raise DataError(
            f"{path}: missing box column(s) for {', '.join(missing)}; expected NIH's "
            f"'Image Index, Finding Label, Bbox [x, y, w, h]' or '{', '.join(BOX_COLUMNS)}'. "
            f"Columns present: {', '.join(columns)}"
        )
    out = pd.DataFrame({"image": raw[picked["image"]].astype(str).str.strip()})
    names = raw[picked["finding"]].astype(str).str.strip()
    unknown = sorted({n for n in names.unique() if not is_finding(n)})
    if unknown:
        raise LabelError(
            f"{path}: unknown finding name(s) in boxes: {_few(unknown, 10)}; known: {', '.join(ALL_FINDINGS)}"
        )
    mapping = {n: canonical(n) for n in names.unique()}
    out["finding"] = names.map(mapping)
    for key in ("x", "y", "w", "h"):
        values = pd.to_numeric(raw[picked[key]], errors="coerce")
        bad = values.isna()
        if bad.any():
            raise DataError(
                f"{path}: column '{picked[key]}' has non-numeric value(s) on line(s) "
                f"{_few((np.flatnonzero(bad) + 2).tolist())}"
            )
        out[key] = values.astype(float)
    bad = (out["w"] <= 0) | (out["h"] <= 0)
    if bad.any():
        raise DataError(
            f"{path}: boxes need w > 0 and h > 0; line(s) {_few((np.flatnonzero(bad) + 2).tolist())}"
        )
    return out.reset_index(drop=True)
