"""Views (projections): one spelling per view and THE filter (frontal by default for training).

Each reader writes the dataset's own view code in upper case (NIH ``PA``/``AP``,
CheXpert ``AP``/``PA``/``FRONTAL``/``LL``/``LATERAL``, MIMIC ``ViewPosition``,
PadChest ``Projection``). ``select_views`` keeps rows whose view is in the asked set;
``"frontal"`` means every frontal code below and keeps rows with *no* view recorded
(tables without a view column, e.g. VinDr-CXR, are frontal films), ``"all"`` keeps all,
and says what it dropped (``ViewSelection``, kept on the ``LabelTable``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from cxrdx.data.label_table import ViewSelection
from cxrdx.errors import ConfigError, DataError

FRONTAL_VIEWS = frozenset(
    {"PA", "AP", "FRONTAL", "AP_HORIZONTAL", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD", "AP_SUPINE"}
)
LATERAL_VIEWS = frozenset({"LL", "RL", "L", "LATERAL", "LAT", "XTABLE LATERAL", "LAO", "RAO"})


def parse_views(text: str | Iterable[str] | None) -> frozenset[str] | None:
    """``"frontal"`` (default for training), ``"all"`` (None: no filter) or a list like ``PA,AP``."""
    if text is None:
        return None
    items = [text] if isinstance(text, str) else list(text)
    names = [v.strip().upper() for item in items for v in str(item).split(",") if v.strip()]
    if not names:
        raise ConfigError("--views is empty; give 'frontal', 'all' or a list such as PA,AP")
    if "ALL" in names:
        return None
    out: set[str] = set()
    for n in names:
        out |= FRONTAL_VIEWS | {""} if n == "FRONTAL" else {n}
    return frozenset(out)


def select_views(
    df: pd.DataFrame, views: str | Iterable[str] | None, what: str = ""
) -> tuple[pd.DataFrame, ViewSelection | None]:
    """Rows whose ``view`` is in ``views`` (see ``parse_views``), and what was kept and dropped (None: no filter)."""
    keep_set = parse_views(views)
    if keep_set is None or "view" not in df.columns:
        return df, None
    view = df["view"].fillna("").astype(str).str.upper().to_numpy()
    keep = np.isin(view, list(keep_set))
    if not keep.any():
        present = ", ".join(sorted(set(view))) or "none"
        raise DataError(
            f"{what or 'the label table'}: no image has a view in {sorted(v for v in keep_set if v)} "
            f"(views present: {present}); pass --views all or the views you want"
        )
    out = df.loc[keep].reset_index(drop=True)
    dropped = {str(k): int(v) for k, v in pd.Series(view[~keep]).value_counts().items()}
    return out, ViewSelection(tuple(sorted(v or "(none)" for v in keep_set)), dropped)


def filter_views(df: pd.DataFrame, views: str | Iterable[str] | None, what: str = "") -> pd.DataFrame:
    """Rows whose ``view`` is in ``views`` (``select_views`` without the counts)."""
    return select_views(df, views, what)[0]


def is_frontal(view: str) -> bool:
    return str(view).strip().upper() in FRONTAL_VIEWS
