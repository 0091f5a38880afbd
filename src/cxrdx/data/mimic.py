"""MIMIC-CXR-JPG: per-study labels (``mimic-cxr-2.0.0-chexpert.csv`` or ``-negbio.csv``) joined to images.

Labels are per study (``subject_id``, ``study_id``; the 14 CheXpert observations,
1 / 0 / -1 / blank; blanks read as in ``chexpert.py``: negative on a
``No Finding = 1`` study, else "not mentioned" for the ``--blank`` policy). Images and views come from ``mimic-cxr-2.0.0-metadata.csv[.gz]``
beside the label file (``dicom_id``, ``subject_id``, ``study_id``, ``ViewPosition``);
the official split from ``mimic-cxr-2.0.0-split.csv[.gz]`` when present (column
``official_split``). Every image of a study gets the study's labels. Image paths are
``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg`` relative to the dataset root (the folder of
the label file unless --images says otherwise). Studies with labels but no image in
the metadata are left out (counted in ``attrs['notes']``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data.chexpert import no_finding_rule, observation_columns
from cxrdx.data.columns import Parsed, _pick, _read_csv, require_columns
from cxrdx.data.generic import code_columns
from cxrdx.data.readers import ReadOptions, register
from cxrdx.errors import DataError

METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
SIGNATURE = ("subject_id", "study_id")


def _beside(path: Path, name: str) -> Path | None:
    for cand in (path.parent / name, path.parent / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def _ids(values: pd.Series) -> np.ndarray:
    return values.astype(str).str.strip().str.replace(r"\.0$", "", regex=True).to_numpy(dtype=object)


def read(path: Path, raw: pd.DataFrame, options: ReadOptions | None = None) -> Parsed:
    columns = [str(c) for c in raw.columns]
    cols = require_columns(path, columns, SIGNATURE, "MIMIC-CXR")
    labels = code_columns(path, raw, observation_columns(path, columns, "mimic"))
    flag = no_finding_rule(path, raw, columns, labels)  # the CheXpert and NegBio labelers share the rule
    meta_path = _beside(path, METADATA)
    if meta_path is None:
        raise DataError(
            f"{path}: MIMIC-CXR labels are per study; the images and their views are listed in {METADATA} "
            f"(or .gz), which must sit beside the label file in {path.parent}"
        )
    meta = _read_csv(meta_path, "MIMIC-CXR metadata")
    mcols = require_columns(
        meta_path, [str(c) for c in meta.columns], ("dicom_id", *SIGNATURE), "MIMIC metadata"
    )
    key = pd.Series(_ids(raw[cols["subject_id"]])) + "/" + pd.Series(_ids(raw[cols["study_id"]]))
    dup = key[key.duplicated()]
    if len(dup):
        raise DataError(f"{path}: study {dup.iloc[0]} is listed more than once (line {dup.index[0] + 2})")
    row_of = pd.Series(np.arange(len(raw)), index=key.to_numpy())
    subject, study = _ids(meta[mcols["subject_id"]]), _ids(meta[mcols["study_id"]])
    dicom = _ids(meta[mcols["dicom_id"]])
    mkey = pd.Series(subject) + "/" + pd.Series(study)
    src = row_of.reindex(mkey.to_numpy()).to_numpy()
    has = ~np.isnan(src)
    src = src[has].astype(np.int64)
    subject, study, dicom = subject[has], study[has], dicom[has]
    image = np.array(
        [f"files/p{s[:2]}/p{s}/s{t}/{d}.jpg" for s, t, d in zip(subject, study, dicom, strict=True)],
        dtype=object,
    )
    vcol = next((c for c in meta.columns if str(c) == "ViewPosition"), None)
    view = (
        meta[vcol].astype(str).str.strip().str.upper().to_numpy(dtype=object)[has]
        if vcol
        else np.full(len(image), "", dtype=object)
    )
    extra: dict[str, np.ndarray] = {} if flag is None else {"no_finding": flag[src]}
    split_path = _beside(path, SPLIT)
    if split_path is not None:
        sp = _read_csv(split_path, "MIMIC-CXR split")
        scols = require_columns(
            split_path, [str(c) for c in sp.columns], ("dicom_id", "split"), "MIMIC split"
        )
        by_dicom = pd.Series(
            sp[scols["split"]].astype(str).str.strip().to_numpy(), index=_ids(sp[scols["dicom_id"]])
        )
        extra["official_split"] = by_dicom.reindex(dicom).fillna("").to_numpy(dtype=object)
    unlabelled_studies = len(set(mkey[~has])) if (~has).any() else 0
    notes = (
        [f"{unlabelled_studies} studies in {meta_path.name} have no labels in {path.name}; left out"]
        if unlabelled_studies
        else []
    )
    return Parsed(
        fmt=f"mimic-{'negbio' if 'negbio' in path.name.lower() else 'chexpert'}",
        image=image,
        patient=subject,
        study=np.array([f"{s}/{t}" for s, t in zip(subject, study, strict=True)], dtype=object),
        view=view,
        labels={f: v[src] for f, v in labels.items()},
        lines=src + 2,
        extra=extra,
        notes=notes,
    )


def detect(path: Path, columns: list[str]) -> bool:
    return all(_pick(columns, (c,)) for c in SIGNATURE)


register(
    "mimic", detect=detect, read=read, order=30, layout="MIMIC-CXR-JPG (subject_id, study_id, observations)"
)
