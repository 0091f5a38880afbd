"""THE registry of label-table readers: each dataset's module registers its name, layout test and reader.

A reader module (``nih``, ``generic``, ``chexpert``, ``mimic``, ``padchest``, ``vindr``,
``google``) calls ``register`` at import; ``tables.read_labels`` imports them (its one list)
and dispatches through ``READERS``: a forced ``dataset=`` names the reader, else
``detect_layout`` asks each reader, in ``order`` (the most specific header first), whether a
header is its layout. Adding a dataset is one module that registers itself, its import in
``tables.py`` and its name in ``settings.DATASETS`` (the CLI's choices, kept light; a test
checks the two agree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrdx.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from cxrdx.data.columns import Parsed


@dataclass(frozen=True)
class ReadOptions:
    """The reader-specific settings ``read_labels`` passes to every reader (each uses what it needs)."""

    mixed_no_finding: str = "error"  # NIH "Finding Labels": No Finding|Effusion is an error, or "keep"
    vindr_rule: str = "any"  # VinDr-CXR: positive when any or most readers marked it


@dataclass(frozen=True)
class Reader:
    """One dataset's label-table reader.

    ``detect(path, columns)``: whether a header (the CSV's column names) is this layout.
    ``read(path, raw, options)``: the raw CSV (all cells text) decoded into ``Parsed``.
    ``order``: detection precedence, lowest asked first (publisher signatures before the
    catch-all generic table). ``layout``: the header in words, for "unknown layout" errors.
    """

    name: str
    detect: Callable[[Path, list[str]], bool]
    read: Callable[[Path, pd.DataFrame, ReadOptions], Parsed]
    order: int
    layout: str


READERS: dict[str, Reader] = {}


def register(name: str, *, detect, read, order: int, layout: str) -> Reader:
    """Add a reader (called once by each reader module at import); a name registered twice is an error."""
    if name in READERS:
        raise ValueError(f"a label-table reader named {name!r} is already registered")
    READERS[name] = reader = Reader(name, detect, read, order, layout)
    return reader


def by_detection_order() -> list[Reader]:
    return sorted(READERS.values(), key=lambda r: (r.order, r.name))


def detect_layout(path: Path, columns: list[str], known: tuple[str, ...] = ()) -> str:
    """Which registered layout a header is: the first reader (by ``order``) that claims it; DataError when none.

    ``known``: the names in the order the error message lists them (default: detection order).
    """
    readers = by_detection_order()
    for reader in readers:
        if reader.detect(path, columns):
            return reader.name
    listed = [READERS[n] for n in known if n in READERS] or readers
    described = [f"{r.layout}" for r in listed]
    if len(described) > 1:
        described[-1] = f"or {described[-1]}"
    raise DataError(
        f"{path}: unknown label table layout. Known layouts: {', '.join(described)}. "
        f"Columns present: {', '.join(columns)}. Pass --dataset NAME to say which it is"
    )
