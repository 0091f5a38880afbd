"""NIH's Google expert re-labels (Majkowska et al., Radiology 2019): 4 findings adjudicated by three radiologists.

The file keeps NIH's columns (``Image Index``, ``Patient ID``, ``View Position``, ...)
and adds ``Fracture``, ``Pneumothorax``, ``Airspace opacity``, ``Nodule or mass``
(``YES``/``NO``) and ``Set Id`` (``val``/``test``, kept as ``official_split``). Only
the four adjudicated findings are labelled (NIH's own NLP ``Finding Labels`` are left
out: mixing both would give two answers for Pneumothorax); the other findings are
missing, never negative.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrdx.data.columns import (
    AGE_COLUMNS,
    Parsed,
    _age,
    _pick,
    normalize_patient,
    require_columns,
    sex_value,
    text_column,
)
from cxrdx.data.generic import code_columns
from cxrdx.data.label_map import map_name
from cxrdx.data.readers import ReadOptions, register

NAMES = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
SIGNATURE = ("Image Index", "Set Id", "Airspace opacity")


def read(path: Path, raw: pd.DataFrame, options: ReadOptions | None = None) -> Parsed:
    columns = [str(c) for c in raw.columns]
    cols = require_columns(path, columns, ("Image Index", "Patient ID", *NAMES), "Google NIH re-label")
    found = {map_name("google", n, str(path)): cols[n] for n in NAMES}
    labels = code_columns(path, raw, found)
    set_col = _pick(columns, ("Set Id",))
    age_col = _pick(columns, AGE_COLUMNS)
    return Parsed(
        fmt="google",
        image=text_column(raw, cols["Image Index"]),
        patient=normalize_patient(raw[cols["Patient ID"]]).to_numpy(),
        view=text_column(raw, _pick(columns, ("View Position",)), lambda v: v.strip().upper()),
        age=text_column(raw, age_col, _age) if age_col else None,
        sex=text_column(raw, _pick(columns, ("Patient Gender",)), sex_value),
        labels=labels,
        extra={"official_split": text_column(raw, set_col)} if set_col else {},
    )


def detect(path: Path, columns: list[str]) -> bool:
    return all(_pick(columns, (c,)) for c in SIGNATURE)


register(
    "google", detect=detect, read=read, order=40, layout="Google NIH re-labels (+ Set Id, Airspace opacity)"
)
