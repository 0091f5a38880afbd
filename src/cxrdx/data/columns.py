"""Column names and the small helpers every table reader shares.

Patient ids are text. Purely numeric ids are written without leading zeros
(NIH's ``Patient ID`` 1 stays ``"1"``; a generic ``00012`` becomes ``"12"``), so the
same patient compares equal across tables whatever padding each file uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.errors import DataError

# Accepted spellings (compared case- and space-insensitively), first match wins.
IMAGE_COLUMNS = ("image", "Image Index", "filename", "file", "path")
PATIENT_COLUMNS = ("patient", "Patient ID", "patient_id")
VIEW_COLUMNS = ("view", "View Position", "ViewPosition", "view_position", "AP/PA")
AGE_COLUMNS = ("age", "Patient Age", "patient_age")
SEX_COLUMNS = ("sex", "Patient Gender", "gender", "patient_sex")


def _norm(name: str) -> str:
    return " ".join(str(name).strip().lower().replace("_", " ").split())


def _pick(columns: Iterable[str], candidates: Iterable[str]) -> str | None:
    by_norm: dict[str, str] = {}
    for c in columns:
        by_norm.setdefault(_norm(c), c)
    for cand in candidates:
        if _norm(cand) in by_norm:
            return by_norm[_norm(cand)]
    return None


def _few(items: Iterable, n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _map_unique(values, func) -> np.ndarray:
    """Apply ``func`` to each distinct value once (tables repeat values a lot)."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
    mapped = np.empty(len(uniques), dtype=object)
    mapped[:] = [func(str(u)) for u in uniques]
    return mapped[codes]


_NUMERIC_ID = re.compile(r"\d+(\.0+)?")


def _patient_id(text: str) -> str:
    text = text.strip()
    if _NUMERIC_ID.fullmatch(text):
        return str(int(float(text))) if "." in text else (text.lstrip("0") or "0")
    return text


def normalize_patient(values) -> pd.Series:
    """Patient ids as text; numeric ids without leading zeros (see module doc)."""
    return pd.Series(_map_unique(values, _patient_id), dtype=object)


_AGE = re.compile(r"\s*(\d+(?:\.\d*)?)")


def _age(text: str):
    """Years as an int, from '57', '57.0' or DICOM-like '057Y'; None if absent."""
    m = _AGE.match(text)
    return round(float(m.group(1))) if m else None


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; give the CSV file inside it")
    _refuse_non_csv(path, what)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{what} {path} is empty (no header, no rows)") from exc
    except pd.errors.ParserError as exc:  # pandas' text names C internals; say what is wrong instead
        where = re.search(r"line (\d+)", str(exc))
        at = f" (line {where.group(1)} has a different number of fields than the header)" if where else ""
        raise DataError(
            f"{what} {path} is not a well-formed CSV table{at}; give a comma-separated file with one "
            "header line"
        ) from None
    except (UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{what} {path} cannot be read as CSV ({type(exc).__name__}: {exc})") from exc
    if what == "label table":
        _refuse_box_table(path, [str(c) for c in table.columns])
    return table


COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zip", ".xz", ".zst")  # pandas decompresses these itself


def _refuse_non_csv(path: Path, what: str) -> None:
    """JSON, images, PDFs, archives given where a CSV belongs: say what the file is."""
    if path.name.lower().endswith(COMPRESSED_SUFFIXES):
        return
    from cxrdx.imaging.sniff import describe_non_image, sniff_image

    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return  # pandas reports it below
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        raise DataError(
            f"{what} {path} is JSON, not a CSV table; give a comma-separated file with one header line "
            "(image, patient and label columns)"
        )
    kind = "DICOM image" if head[128:132] == b"DICM" else sniff_image(head)
    if kind:
        raise DataError(f"{what} {path} is a {kind}{'' if 'image' in kind else ' image'}, not a CSV table")
    guess = describe_non_image(head)  # only the kinds it names (PDF, ZIP, gzip, .npy, HTML)
    if guess.startswith("it looks like") and guess != "it looks like a text file":
        raise DataError(f"{what} {path} is not a CSV table: {guess}")


BOX_COLUMNS = ("bbox [x", "x", "y", "w", "h")


def _refuse_box_table(path: Path, columns: list[str]) -> None:
    """A box table (NIH's BBox_List_2017.csv or cxrdx's image,finding,x,y,w,h) where labels belong."""
    names = {_norm(c) for c in columns}
    nih = "bbox [x" in names and "finding label" in names
    ours = {"x", "y", "w", "h"} <= names and ("finding" in names or "finding label" in names)
    if nih or ours:
        raise DataError(
            f"label table {path}: this looks like BBox_List_2017.csv (a table of boxes: one finding and "
            "x, y, w, h per row), not labels; pass it as --boxes, and give the labels (Data_Entry_2017.csv "
            "or a split CSV) as --labels"
        )


@dataclass
class Parsed:
    """What one dataset reader hands ``tables.read_labels``: per-row metadata and float label codes.

    ``labels`` maps canonical findings (those this dataset labels) to float32 arrays of
    1 / 0 / -1 (uncertain) / NaN (unlabelled). ``lines`` are the CSV line numbers each
    row came from (for error messages); ``extra`` holds dataset-specific columns kept
    beside the label table (e.g. ``official_split``).
    """

    fmt: str
    image: np.ndarray
    patient: np.ndarray
    labels: dict[str, np.ndarray]
    study: np.ndarray | None = None
    view: np.ndarray | None = None
    age: np.ndarray | None = None
    sex: np.ndarray | None = None
    lines: np.ndarray | None = None
    given_path: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unmapped: dict[str, int] = field(default_factory=dict)  # source terms with no finding -> images


def require_columns(path: Path, columns: list[str], needed: Iterable[str], layout: str) -> dict[str, str]:
    """The actual spelling of each needed column; DataError naming every missing one."""
    found = {n: _pick(columns, (n,)) for n in needed}
    missing = [n for n, c in found.items() if c is None]
    if missing:
        raise DataError(
            f"{path}: not a {layout} table: missing column(s) {', '.join(missing)}. "
            f"Columns present: {', '.join(columns)}"
        )
    return {n: c for n, c in found.items() if c is not None}


def text_column(raw: pd.DataFrame, col: str | None, func=lambda v: v.strip()) -> np.ndarray:
    """A column mapped per distinct value (empty strings where the column is absent)."""
    return _map_unique(raw[col] if col else [""] * len(raw), func)


def sex_value(text: str) -> str:
    """M / F from M, F, Male, Female (any case); anything else (Unknown, blank) -> ''."""
    t = text.strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(t, "")


def read_flat(path: Path, raw: pd.DataFrame, has_labels: bool, wanted: str, decode) -> Parsed:
    """A flat table (one row per image: an image column, a patient column, optional view / age / sex /
    study / path columns) whose labels ``decode(images, image_col, patient_col) -> (labels, fmt)`` reads.

    ``has_labels``: whether the label column(s) are present; when one of the three is missing the
    DataError names every one (``wanted`` says which label columns would do).
    """
    columns = [str(c) for c in raw.columns]
    image_col = _pick(columns, IMAGE_COLUMNS)
    patient_col = _pick(columns, PATIENT_COLUMNS)
    missing = []
    if image_col is None:
        missing.append(f"an image column (one of {', '.join(IMAGE_COLUMNS)})")
    if patient_col is None:
        missing.append(
            f"a patient column (one of {', '.join(PATIENT_COLUMNS)}; "
            "if every image is a different patient, copy the image column)"
        )
    if not has_labels:
        missing.append(f"labels: {wanted}")
    if missing or image_col is None or patient_col is None:
        raise DataError(f"{path}: missing {'; '.join(missing)}. Columns present: {', '.join(columns)}")
    images = np.asarray([str(v).strip() for v in raw[image_col]], dtype=object)
    labels, fmt = decode(images, image_col, patient_col)

    def optional(candidates, func) -> np.ndarray | None:
        col = _pick(columns, candidates)
        return _map_unique(raw[col], func) if col else None

    path_col = _pick(columns, ("path",))
    given = raw[path_col].astype(str).str.strip().to_numpy() if path_col and path_col != image_col else None
    study_col = _pick(columns, ("study", "study_id", "Study ID"))
    return Parsed(
        fmt=fmt,
        image=images,
        patient=normalize_patient(raw[patient_col]).to_numpy(),
        study=optional((study_col,), str.strip) if study_col else None,
        view=optional(VIEW_COLUMNS, lambda v: v.strip().upper()),
        age=optional(AGE_COLUMNS, _age),
        sex=optional(SEX_COLUMNS, lambda v: v.strip().upper()),
        labels=labels,
        given_path=given,
    )
