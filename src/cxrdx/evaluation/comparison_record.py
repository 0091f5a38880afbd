"""THE comparison record: what ``comparison.json`` holds, typed and versioned (``docs/metrics.md``).

``cxrdx compare`` (``cxrdx.evaluation.external.compare``) builds a :class:`Comparison` and writes it with
:func:`write_comparison`; the table it prints and ``comparison.md``, and the plot, read its attributes.
The parts are :class:`~cxrdx.evaluation.metrics_record.Record` s, read and written like ``metrics.json``'s.

Versions (``"schema"`` in the file):

- **1** (``cxrdx.comparison/1``): the keys cxrdx wrote before the record existed, plus ``"schema"``
  (first). The files written before the key existed (no ``"schema"``) have the same keys and load as 1. A minor version
  (``cxrdx.comparison/1.1``) may add keys: they are kept (``extra``) and written back.
- A newer major version is refused with a one-line :class:`DataError` that says to upgrade cxrdx.

Standard library only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrdx.errors import DataError
from cxrdx.evaluation.metrics_record import Record, absent, check_schema

SCHEMA_NAME = "cxrdx.comparison"
SCHEMA_VERSION = 1  # the major version this cxrdx writes and the newest it reads
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"
FILE = "comparison.json"
_REMEDY = "re-run `cxrdx compare`"
_SCORED_ONLY = ("auroc_ci", "n_labelled", "n_pos", "prevalence")  # keys a skipped cell does not have


@dataclass(frozen=True)
class DatasetAuroc(Record):
    """One finding on one dataset: scored (AUROC, CI, counts, the drop from the internal one), or skipped (why)."""

    REMEDY = _REMEDY

    auroc: float | None = None  # None: skipped, or undefined (no positives or no negatives)
    skipped: str | None = absent()  # not evaluated on this dataset, and why (then only auroc and skipped)
    auroc_ci: tuple[float | None, ...] | None = None  # [low, high]
    n_labelled: int | None = None
    n_pos: int | None = None
    prevalence: float | None = None
    drop: float | None = absent()  # internal AUROC - this one; external datasets where both are defined

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.skipped is not None:
            for k in _SCORED_ONLY:
                if getattr(self, k) is None:
                    out.pop(k, None)
        return out


@dataclass(frozen=True)
class DropSummary(Record):
    """An external dataset against the internal one, over the findings both define an AUROC for."""

    REMEDY = _REMEDY

    mean_drop: float | None = None
    mean_internal: float | None = None
    mean_external: float | None = None
    findings: int = 0  # how many findings the means are over


@dataclass(frozen=True)
class Comparison(Record):
    """Everything ``cxrdx compare`` found: ``comparison.json``."""

    REMEDY = _REMEDY

    internal: str = ""  # the first dataset's name
    datasets: tuple[str, ...] = ()  # every dataset's name, the internal one first
    findings: dict[str, dict[str, DatasetAuroc]] = field(default_factory=dict)  # finding -> dataset -> cell
    drop: dict[str, DropSummary] = field(default_factory=dict)  # external dataset -> its summary

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **super().to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str = FILE) -> Comparison:
        if isinstance(data, Mapping):
            schema_version(data.get("schema"), where)
            data = {k: v for k, v in data.items() if k != "schema"}
        return super().from_json(data, where)


def schema_version(schema: Any, where: str = FILE) -> int:
    """The major version of a comparison file's ``"schema"`` (None: 1, written before the key); newer ones are refused."""
    return check_schema(schema, where, SCHEMA_NAME, SCHEMA_VERSION, "comparison")


def read_comparison(path: str | os.PathLike) -> Comparison:
    """A ``comparison.json`` (or the folder holding it)."""
    p = Path(path)
    p = p / FILE if p.is_dir() else p
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: cannot read a comparison.json ({exc}); {_REMEDY}") from None
    return Comparison.from_json(data, str(p))


def write_comparison(path: str | os.PathLike, record: Comparison) -> Path:
    """``comparison.json`` (atomic; laid out as cxrdx wrote it before the record existed: indent 2, no final newline)."""
    from cxrdx.files import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(record.to_json(), indent=2))
    return path
