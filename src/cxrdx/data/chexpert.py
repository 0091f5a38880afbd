"""CheXpert (Stanford) ``train.csv`` / ``valid.csv``: one row per image, ``Path`` holding patient/study/view.

``Path`` is ``CheXpert-v1.0[-small]/train/patientNNNNN/studyN/viewN_frontal.jpg``,
relative to the folder that holds the ``CheXpert-v1.0*`` folder. Patient and study come
from it. The 14 observations are 1 / 0 / -1 (uncertain) / blank (not mentioned); names map
through ``label_map.csv`` (``Pleural Effusion`` -> Effusion).

Blanks, by the labeler's rule (Irvin et al. 2019): ``No Finding`` is 1 only when no pathology
is positive or uncertain, so on a ``No Finding = 1`` row every blank finding is *negative*
(torchxrayvision's rule too). The other blanks are "not mentioned" (``NOT_MENTIONED``), read
as the ``--blank`` policy asks (``tables.read_labels``: negative, as in the CheXpert paper's
baselines, or unlabelled). ``No Finding`` itself is kept as the ``no_finding`` column (1 / 0),
the publisher's own count, not a finding.
View: ``AP``/``PA`` for frontal films (``FRONTAL`` when ``AP/PA`` is blank or odd), ``LL``/``RL``
or ``LATERAL`` for lateral ones (``Frontal/Lateral`` decides); the 17 films marked Frontal whose
``AP/PA`` says LL or RL are lateral films (their ``AP/PA`` code is kept), so the frontal filter drops them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data import label_map
from cxrdx.data.columns import (
    AGE_COLUMNS,
    Parsed,
    _age,
    _few,
    _map_unique,
    _pick,
    require_columns,
    sex_value,
    text_column,
)
from cxrdx.data.generic import NOT_MENTIONED, code_columns
from cxrdx.data.readers import ReadOptions, register
from cxrdx.errors import DataError

_PATIENT_STUDY = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/")
SIGNATURE = ("Path", "Frontal/Lateral")


def observation_columns(path: Path, columns: list[str], dataset: str) -> dict[str, str]:
    """Canonical finding -> column, for every column the label map knows for ``dataset``."""
    table = label_map.name_map(dataset)
    from cxrdx.labels import _key

    out: dict[str, str] = {}
    for c in columns:
        target = table.get(_key(c))
        if target:
            out[target] = c
    if not out:
        raise DataError(
            f"{path}: no {dataset} observation columns found (expected e.g. 'Pleural Effusion', "
            f"'Cardiomegaly'); columns present: {', '.join(columns)}"
        )
    return out


def no_finding_rule(
    path: Path, raw: pd.DataFrame, columns: list[str], labels: dict[str, np.ndarray]
) -> np.ndarray | None:
    """Apply the labeler's No Finding rule in place; the publisher's flag (1.0 / 0.0), or None without the column.

    A blank on a ``No Finding = 1`` row becomes 0 (negative); every other blank becomes
    ``NOT_MENTIONED`` for the ``--blank`` policy to decide.
    """
    col = _pick(columns, ("No Finding",))
    flag = None
    if col is not None:
        flag = (code_columns(path, raw, {"No Finding": col})["No Finding"] == 1).astype(np.float32)
    for v in labels.values():
        blank = np.isnan(v)
        if flag is not None:
            v[blank & (flag == 1)] = 0.0
            blank &= flag != 1
        v[blank] = NOT_MENTIONED
    return flag


def read(path: Path, raw: pd.DataFrame, options: ReadOptions | None = None) -> Parsed:
    columns = [str(c) for c in raw.columns]
    cols = require_columns(path, columns, ("Path",), "CheXpert")
    images = text_column(raw, cols["Path"], lambda v: v.strip().replace("\\", "/"))
    parts = _map_unique(images, lambda v: _PATIENT_STUDY.search(v))
    bad = np.array([m is None for m in parts])
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"{path}: 'Path' must hold .../patientNNNNN/studyN/viewN_*.jpg; line(s) "
            f"{_few((rows + 2).tolist())} do not (e.g. {images[rows[0]]!r})"
        )
    patient = np.array([m.group(1) for m in parts], dtype=object)
    study = np.array([f"{m.group(1)}/{m.group(2)}" for m in parts], dtype=object)
    fl_col, appa_col = _pick(columns, ("Frontal/Lateral",)), _pick(columns, ("AP/PA",))
    fl = text_column(raw, fl_col, lambda v: v.strip().lower())
    appa = text_column(raw, appa_col, lambda v: v.strip().upper())
    view = np.where(
        fl == "lateral",
        np.where(np.isin(appa, ["LL", "RL"]), appa, "LATERAL"),
        np.where(np.isin(appa, ["AP", "PA", "LL", "RL"]), appa, np.where(fl == "frontal", "FRONTAL", appa)),
    ).astype(object)
    age_col = _pick(columns, AGE_COLUMNS)
    labels = code_columns(path, raw, observation_columns(path, columns, "chexpert"))
    flag = no_finding_rule(path, raw, columns, labels)
    return Parsed(
        fmt="chexpert",
        image=images,
        patient=patient,
        study=study,
        view=view,
        age=text_column(raw, age_col, _age) if age_col else None,
        sex=text_column(raw, _pick(columns, ("Sex",)), sex_value),
        labels=labels,
        extra={"no_finding": flag} if flag is not None else {},
    )


def detect(path: Path, columns: list[str]) -> bool:
    """CheXpert's header; or a ``Path`` and a ``Pleural Effusion`` column (a table with NIH's ``Finding Labels`` is NIH's)."""
    if all(_pick(columns, (c,)) for c in SIGNATURE):
        return True
    return all(_pick(columns, (c,)) for c in ("Path", "Pleural Effusion")) and not _pick(
        columns, ("Finding Labels",)
    )


register(
    "chexpert", detect=detect, read=read, order=50, layout="CheXpert (Path, Frontal/Lateral, observations)"
)
