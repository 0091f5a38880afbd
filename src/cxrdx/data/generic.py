"""Generic label format: an image column, a patient column and any subset of finding columns.

Each finding column holds 1 (positive), 0 (negative), -1 (uncertain) or blank
(unlabelled); ``1.0``/``0.0``/``-1.0``, ``yes``/``no`` and ``true``/``false`` are
accepted too. Column names are any cxrdx finding name or alias (``labels.ALL_FINDINGS``),
in any case. A ``Finding Labels`` column instead is read as NIH's (``nih.decode``). The reader
registered as ``generic`` is the catch-all, asked last. The codes helpers here are shared by
the CheXpert, MIMIC and Google readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data import nih
from cxrdx.data.columns import IMAGE_COLUMNS, Parsed, _few, _map_unique, _pick, read_flat
from cxrdx.data.readers import ReadOptions, register
from cxrdx.errors import ConfigError, DataError
from cxrdx.labels import ALL_FINDINGS, FINDINGS, canonical, is_finding

NAN = float("nan")
_CODES = {
    "1": 1.0,
    "1.0": 1.0,
    "true": 1.0,
    "yes": 1.0,
    "0": 0.0,
    "0.0": 0.0,
    "false": 0.0,
    "no": 0.0,
    "-1": -1.0,
    "-1.0": -1.0,
    "": NAN,
    "nan": NAN,
}
_BAD = 9.0  # marker for a value outside the accepted set
# A CheXpert / MIMIC-CXR cell the labeler left blank ("not mentioned in the report") on a row
# that is not the publisher's No Finding: its meaning is the --blank policy (tables.BLANK_POLICIES),
# applied by ``tables.read_labels`` and ``cache.open_cache``; kept raw in a prepared cache.
NOT_MENTIONED = -2.0
BLANK_POLICIES = ("negative", "unlabelled", "keep")  # keep: leave NOT_MENTIONED (counting, caching)
DEFAULT_BLANK = "negative"  # why: README "Blank labels"


def check_blank(blank: str) -> None:
    if blank not in BLANK_POLICIES:
        raise ConfigError(f"--blank {blank!r}: choose one of {', '.join(BLANK_POLICIES[:2])}")


def apply_blank(v: np.ndarray, blank: str) -> int:
    """Read the "not mentioned" cells of one finding column as ``blank`` says (in place); how many there were."""
    nm = v == NOT_MENTIONED
    if blank != "keep":
        v[nm] = 0.0 if blank == "negative" else np.nan
    return int(nm.sum())


def finding_columns(path: Path, columns: list[str], skip: str | None = None) -> dict[str, str]:
    """Canonical finding -> the column that holds it (``ALL_FINDINGS`` order); two columns for one is an error."""
    found: dict[str, str] = {}
    for c in columns:
        if c != skip and is_finding(c):
            name = canonical(c)
            if name in found:
                raise DataError(f"{path}: columns '{found[name]}' and '{c}' both mean {name}; keep one")
            found[name] = c
    return {f: found[f] for f in ALL_FINDINGS if f in found}


def code_columns(path: Path, raw: pd.DataFrame, columns: dict[str, str]) -> dict[str, np.ndarray]:
    """Finding -> float32 codes 1 / 0 / -1 / NaN; values outside that set: DataError naming column and lines."""
    out: dict[str, np.ndarray] = {}
    problems = []
    for finding, col in columns.items():
        code = _map_unique(raw[col], lambda v: _CODES.get(v.strip().lower(), _BAD)).astype(np.float32)
        bad = code == _BAD
        if bad.any():
            rows = np.flatnonzero(bad)
            values = pd.unique(raw[col].to_numpy(dtype=object)[bad])
            problems.append(
                f"column '{col}': {len(rows)} value(s) not 1, 0, -1 or blank, e.g. {_few(map(repr, values))} "
                f"on line(s) {_few((rows + 2).tolist())}"
            )
        out[finding] = code
    if problems:
        raise DataError(
            f"{path}: label values must be 1 (positive), 0 (negative), -1 (uncertain) or blank "
            f"(unlabelled); " + "; ".join(problems)
        )
    return out


def read(path: Path, raw: pd.DataFrame, options: ReadOptions) -> Parsed:
    """Finding columns (1 / 0 / -1 / blank), or a ``Finding Labels`` column (NIH's, which wins when both are there)."""
    columns = [str(c) for c in raw.columns]
    labels_col = _pick(columns, (nih.FINDING_LABELS_COLUMN,))
    binary = finding_columns(path, columns, skip=labels_col)

    def decode(images: np.ndarray, image_col: str, patient_col: str):
        if labels_col is not None:
            cells = raw[labels_col]
            return nih.decode(path, cells, images, options.mixed_no_finding, (image_col, patient_col))
        return code_columns(path, raw, binary), "binary" if set(binary) == set(FINDINGS) else "generic"

    return read_flat(
        path,
        raw,
        labels_col is not None or bool(binary),
        f"a '{nih.FINDING_LABELS_COLUMN}' column or finding columns (1 / 0 / -1 / blank) named as "
        f"any of {', '.join(ALL_FINDINGS)}",
        decode,
    )


def detect(path: Path, columns: list[str]) -> bool:
    return _pick(columns, IMAGE_COLUMNS) is not None and bool(finding_columns(path, columns))


register(
    "generic",
    detect=detect,
    read=read,
    order=90,  # the catch-all: any table with an image column and finding columns
    layout="generic (an image column, a patient column, finding columns)",
)
