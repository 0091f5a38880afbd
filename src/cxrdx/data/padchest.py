"""PadChest (``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``): report-derived label lists.

One row per image: ``ImageID``, ``ImageDir`` (the numbered folder it ships in),
``PatientID``, ``StudyID``, ``Projection`` (PA, L, AP, AP_horizontal, ...),
``PatientSex_DICOM``, ``PatientBirth`` (year), ``StudyDate_DICOM`` and ``Labels``, a
Python list literal of English terms (``['pleural effusion', 'cardiomegaly']``);
``MethodLabel`` (``Physician`` or ``RNN_model``) is kept as ``label_method``.

Rule (stated): the labels come from the whole report, so a mapped finding absent
from a labelled row is *negative*; a row whose list is empty or blank is
*unlabelled* (NaN). ``normal`` means all mapped findings are negative (kept as the
``no_finding`` column: PadChest's own No Finding). A term counts for the finding of
its label-map entry and of every ancestor's entry in PadChest's published tree
(``padchest_tree.py``): ``pulmonary mass`` is a ``mass``, ``callus rib fracture`` a
``fracture``; names match exactly, never as substrings. Positive beats uncertain beats
negative when a row's terms disagree. Terms with no finding of their own or through an
ancestor (PadChest has ~190 terms, most with no cxrdx finding) are left out, counted
in ``attrs['unmapped_terms']`` (term -> images) and summarised in ``attrs['notes']``.
The documented choices (``costophrenic angle blunting`` -> *uncertain* Effusion, ...)
are in ``label_map.csv``.
Image: ``ImageDir/ImageID`` under the images folder.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data import label_map
from cxrdx.data.columns import Parsed, _few, _pick, normalize_patient, require_columns, sex_value, text_column
from cxrdx.data.padchest_tree import lineage
from cxrdx.data.readers import ReadOptions, register
from cxrdx.errors import DataError
from cxrdx.labels import _key

SIGNATURE = ("ImageID", "ImageDir", "Labels")


def _terms(text: str):
    t = text.strip()
    if not t or t.lower() == "nan":
        return []
    try:
        value = ast.literal_eval(t)
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return None
    return [str(v).strip() for v in value if str(v).strip()]


def _age(study_date: str, birth: str) -> int | None:
    try:
        return int(str(study_date).strip()[:4]) - int(float(str(birth).strip()))
    except ValueError:
        return None


def read(path: Path, raw: pd.DataFrame, options: ReadOptions | None = None) -> Parsed:
    columns = [str(c) for c in raw.columns]
    cols = require_columns(path, columns, ("ImageID", "ImageDir", "PatientID", "Labels"), "PadChest")
    table = label_map.name_map("padchest")
    code_of = label_map.codes("padchest")
    findings = label_map.findings_of("padchest")
    codes, uniques = pd.factorize(
        raw[cols["Labels"]].astype(str).to_numpy(dtype=object), use_na_sentinel=False
    )
    values = np.full((len(uniques), len(findings)), np.nan, dtype=np.float32)
    col_of = {f: i for i, f in enumerate(findings)}
    unmapped: Counter[str] = Counter()
    bad: list[int] = []
    normal = np.zeros(len(uniques), dtype=np.float32)
    images_of = np.bincount(codes, minlength=len(uniques))  # rows per distinct label list
    for u, text in enumerate(uniques):
        terms = _terms(text)
        if terms is None:
            bad.append(u)
            continue
        if not terms:
            continue  # unlabelled row
        values[u] = 0.0
        for term in dict.fromkeys(terms):  # a term listed twice counts once
            keys = [k for k in lineage(term) if k in table]  # the term's own entry, then its ancestors'
            if not keys:
                unmapped[term] += int(images_of[u])
                continue
            if _key(term) == "normal":
                normal[u] = 1.0
            for k in keys:
                if table[k]:
                    c = col_of[table[k]]
                    values[u, c] = max(values[u, c], code_of[k]) if values[u, c] else code_of[k]
    if bad:
        rows = np.flatnonzero(np.isin(codes, bad))
        raise DataError(
            f"{path}: 'Labels' must be a list literal like ['pleural effusion']; line(s) "
            f"{_few((rows + 2).tolist())} are not (e.g. {uniques[bad[0]]!r})"
        )
    matrix = values[codes]
    study_col, date_col, birth_col = (
        _pick(columns, (n,)) for n in ("StudyID", "StudyDate_DICOM", "PatientBirth")
    )
    age = None
    if date_col and birth_col:
        age = np.array(
            [_age(d, b) for d, b in zip(raw[date_col].astype(str), raw[birth_col].astype(str), strict=True)],
            dtype=object,
        )
    image_dir = text_column(raw, cols["ImageDir"], lambda v: v.strip().removesuffix(".0"))
    image_id = text_column(raw, cols["ImageID"])
    image = np.array([f"{d}/{i}" if d else i for d, i in zip(image_dir, image_id, strict=True)], dtype=object)
    method = _pick(columns, ("MethodLabel",))
    notes = []
    if unmapped:
        top = ", ".join(f"{t} ({n})" for t, n in unmapped.most_common(8))
        notes.append(
            f"{len(unmapped)} PadChest term(s) have no cxrdx finding, of their own or through the PadChest "
            f"tree, and were left out (`cxrdx stats` writes all of them): {top}, ..."
        )
    return Parsed(
        fmt="padchest",
        image=image,
        patient=normalize_patient(raw[cols["PatientID"]]).to_numpy(),
        study=text_column(raw, study_col) if study_col else None,
        view=text_column(raw, _pick(columns, ("Projection",)), lambda v: v.strip().upper()),
        age=age,
        sex=text_column(raw, _pick(columns, ("PatientSex_DICOM",)), sex_value),
        labels={f: matrix[:, i].copy() for f, i in col_of.items()},
        extra={"no_finding": normal[codes], **({"label_method": text_column(raw, method)} if method else {})},
        notes=notes,
        unmapped=dict(unmapped.most_common()),
    )


def detect(path: Path, columns: list[str]) -> bool:
    return all(_pick(columns, (c,)) for c in SIGNATURE)


register("padchest", detect=detect, read=read, order=20, layout="PadChest (ImageID, ImageDir, Labels)")
