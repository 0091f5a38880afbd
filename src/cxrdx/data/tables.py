"""The project's label table: reading any supported source into it, resolving image paths, writing it.

Every table that enters the project (NIH's ``Data_Entry_2017*.csv``, a phantom
``Data_Entry.csv``, a hospital's own CSV, our split files) is read by
``read_labels`` into one *label table*: ``image``, ``path``, ``patient``, ``view``,
``age``, ``sex`` and one uint8 0/1 column per finding in ``labels.FINDINGS``
order. The label cells are decoded by one module per source format
(``cxrdx.data.nih``, ``cxrdx.data.generic``); this module only picks which.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data import generic, nih
from cxrdx.data.columns import (
    AGE_COLUMNS,
    IMAGE_COLUMNS,
    PATIENT_COLUMNS,
    SEX_COLUMNS,
    VIEW_COLUMNS,
    _age,
    _few,
    _map_unique,
    _pick,
    _read_csv,
    normalize_patient,
)
from cxrdx.data.nih import FINDING_LABELS_COLUMN
from cxrdx.errors import DataError
from cxrdx.labels import FINDINGS

META_COLUMNS = ("image", "path", "patient", "view", "age", "sex")
LABEL_COLUMNS = (*META_COLUMNS, *FINDINGS)


def read_labels(
    csv_path: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    require_images: bool = False,
    *,
    mixed_no_finding: str = "error",
) -> pd.DataFrame:
    """Read any supported label table into the project's label table.

    Formats (detected from the header): NIH (``Image Index``, ``Finding Labels``,
    ``Patient ID``), generic with a ``Finding Labels`` column, or generic with one
    0/1 column per finding (names in any case, aliases allowed). ``.csv.gz`` works.
    With ``images_dir`` each image is resolved to ``path`` by one recursive scan
    of that folder; ``require_images=True`` makes a missing file an error.
    A ``Finding Labels`` cell mixing ``No Finding`` with findings (``No Finding|Effusion``)
    is a ``LabelError`` naming the CSV line, image and cell; ``mixed_no_finding="keep"``
    keeps the findings, drops the ``No Finding`` token and warns with the count.
    """
    path = Path(csv_path)
    raw = _read_csv(path, "label table")
    if raw.empty:
        raise DataError(f"label table {path} has a header but no rows")
    columns = [str(c) for c in raw.columns]
    image_col = _pick(columns, IMAGE_COLUMNS)
    patient_col = _pick(columns, PATIENT_COLUMNS)
    labels_col = _pick(columns, (FINDING_LABELS_COLUMN,))
    binary = generic.finding_columns(path, columns, skip=labels_col)
    missing = []
    if image_col is None:
        missing.append(f"an image column (one of {', '.join(IMAGE_COLUMNS)})")
    if patient_col is None:
        missing.append(
            f"a patient column (one of {', '.join(PATIENT_COLUMNS)}; "
            "if every image is a different patient, copy the image column)"
        )
    if labels_col is None:
        absent = [f for f in FINDINGS if f not in binary]
        if len(absent) == len(FINDINGS):
            missing.append(f"labels: a '{FINDING_LABELS_COLUMN}' column or one 0/1 column per finding")
        elif absent:
            missing.append(f"0/1 columns for {', '.join(absent)}")
    if missing:
        raise DataError(f"{path}: missing {'; '.join(missing)}. Columns present: {', '.join(columns)}")

    images = pd.Series([str(v).strip() for v in raw[image_col]], dtype=object)
    empty = images == ""
    if empty.any():
        raise DataError(
            f"{path}: empty '{image_col}' on line(s) {_few((np.flatnonzero(empty) + 2).tolist())}"
        )
    dup = images[images.duplicated(keep=False)]
    if len(dup):
        names = dup.unique()
        raise DataError(
            f"{path}: {len(names)} image id(s) appear more than once: {_few(names)}; ids must be unique"
        )
    patients = normalize_patient(raw[patient_col])
    if (patients == "").any():
        rows = (np.flatnonzero((patients == "").to_numpy()) + 2).tolist()  # line numbers
        raise DataError(f"{path}: empty '{patient_col}' on line(s) {_few(rows)}")

    if labels_col is not None:
        matrix = nih.label_matrix(
            path, raw[labels_col].astype(str), images.to_numpy(), mixed_no_finding=mixed_no_finding
        )
        fmt = nih.format_name(image_col, patient_col)
    else:
        matrix = generic.label_matrix(path, raw, binary)
        fmt = "binary"

    def optional(candidates, func) -> np.ndarray:
        col = _pick(columns, candidates)
        return _map_unique(raw[col], func) if col else _map_unique([""] * len(raw), func)

    age = pd.array(optional(AGE_COLUMNS, _age), dtype="Int64")
    df = pd.DataFrame(
        {
            "image": images.to_numpy(),
            "path": "",
            "patient": patients.to_numpy(),
            "view": optional(VIEW_COLUMNS, lambda v: v.strip().upper()),
            "age": age,
            "sex": optional(SEX_COLUMNS, lambda v: v.strip().upper()),
        }
    )
    for i, finding in enumerate(FINDINGS):
        df[finding] = matrix[:, i]
    path_col = _pick(columns, ("path",))
    given = raw[path_col].astype(str).str.strip().to_numpy() if path_col and path_col != image_col else None
    df["path"] = _resolve_paths(path, df["image"].to_numpy(), given, images_dir, require_images)
    df.attrs["format"] = fmt
    df.attrs["source"] = str(path)
    return df


def index_images(images_dir: Path) -> tuple[dict[str, str], set[str]]:
    """One recursive scan: file name -> path, and the names found more than once."""
    found: dict[str, str] = {}
    dups: set[str] = set()
    for root, _dirs, files in os.walk(images_dir):
        for name in files:
            if name.startswith("."):
                continue
            if name in found:
                dups.add(name)
            else:
                found[name] = os.path.join(root, name)
    return found, dups


def _resolve_paths(
    csv_path: Path,
    images: np.ndarray,
    given: np.ndarray | None,
    images_dir,
    require: bool,
) -> list[str]:
    out = [""] * len(images)
    if given is not None:  # a `path` column: absolute, or relative to the CSV's folder
        for i, p in enumerate(given):
            if p:
                cand = Path(p) if os.path.isabs(p) else csv_path.parent / p
                if cand.is_file():
                    out[i] = str(cand)
    if images_dir is not None:
        root = Path(images_dir)
        if not root.is_dir():
            raise DataError(f"images folder {root} does not exist or is not a folder; check --images")
        index, dups = index_images(root)
        ambiguous = []
        for i, image in enumerate(images):
            if out[i]:
                continue
            if "/" in image or "\\" in image:
                cand = root / image
                if cand.is_file():
                    out[i] = str(cand)
                    continue
            name = os.path.basename(image)
            if name in dups:
                ambiguous.append(name)
            elif name in index:
                out[i] = index[name]
        if ambiguous:
            raise DataError(
                f"{root}: {len(ambiguous)} image name(s) of {csv_path} occur in several subfolders "
                f"({_few(ambiguous)}); write the image column as paths relative to {root}"
            )
    if require:
        missing = [images[i] for i, p in enumerate(out) if not p]
        if missing:
            where = (
                f"under {images_dir}" if images_dir is not None else "(no images folder given; pass --images)"
            )
            raise DataError(
                f"{csv_path}: {len(missing)} of {len(images)} image(s) not found {where}: {_few(missing)}"
            )
    return out


def write_labels(df: pd.DataFrame, path: str | os.PathLike, absolute_paths: bool = False) -> Path:
    """Write a label table in the generic format (``.csv`` or ``.csv.gz``).

    ``path`` is left out unless ``absolute_paths``: split files then stay valid
    when the images folder moves, and ``read_labels(..., images_dir)`` resolves them.
    """
    missing = [c for c in LABEL_COLUMNS if c not in df.columns and c != "path"]
    if missing:
        raise DataError(f"cannot write {path}: the table lacks column(s) {', '.join(missing)}")
    out = df[[c for c in LABEL_COLUMNS if c != "path"]].copy()
    if absolute_paths:
        paths = df["path"] if "path" in df.columns else pd.Series([""] * len(df))
        out.insert(1, "path", [str(Path(p).resolve()) if p else "" for p in paths])
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(path, index=False)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc}") from exc
    return path
