"""Generic label format: one 0/1 column per finding (names in any case, aliases allowed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data.columns import _few, _map_unique
from cxrdx.errors import DataError
from cxrdx.labels import FINDINGS, canonical, is_finding

_BINARY = {"1": 1, "1.0": 1, "true": 1, "yes": 1, "0": 0, "0.0": 0, "false": 0, "no": 0}


def finding_columns(path: Path, columns: list[str], skip: str | None = None) -> dict[str, str]:
    """Canonical finding -> the column that holds it; two columns meaning one finding is an error."""
    found: dict[str, str] = {}
    for c in columns:
        if c != skip and is_finding(c):
            name = canonical(c)
            if name in found:
                raise DataError(f"{path}: columns '{found[name]}' and '{c}' both mean {name}; keep one")
            found[name] = c
    return found


def label_matrix(path: Path, raw: pd.DataFrame, columns: dict[str, str]) -> np.ndarray:
    """(n, 14) uint8 in FINDINGS order; anything but 0/1 (uncertain, blank) is an error naming the column."""
    out = np.zeros((len(raw), len(FINDINGS)), dtype=np.uint8)
    problems = []
    for i, finding in enumerate(FINDINGS):
        col = columns[finding]
        code = _map_unique(raw[col], lambda v: _BINARY.get(v.strip().lower(), -1)).astype(np.int8)
        bad = code < 0
        if bad.any():
            values = pd.unique(raw[col].to_numpy(dtype=object)[bad])
            shown = [repr(v) if str(v).strip() else "empty" for v in values]
            problems.append(f"column '{col}': {int(bad.sum())} value(s) not 0/1, e.g. {_few(shown)}")
        out[:, i] = code == 1
    if problems:
        raise DataError(
            f"{path}: labels must be 0 or 1; "
            + "; ".join(problems)
            + " (map uncertain or missing labels to 0 or 1 before training)"
        )
    return out
