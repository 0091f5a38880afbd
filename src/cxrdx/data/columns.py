"""Column names and the small helpers every table reader shares.

Patient ids are text. Purely numeric ids are written without leading zeros
(NIH's ``Patient ID`` 1 stays ``"1"``; a generic ``00012`` becomes ``"12"``), so the
same patient compares equal across tables whatever padding each file uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{what} {path} is empty (no header, no rows)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{what} {path} cannot be read as CSV ({type(exc).__name__}: {exc})") from exc
