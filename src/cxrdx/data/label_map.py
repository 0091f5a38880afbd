"""THE harmonised label map: each dataset's own finding names -> cxrdx's canonical names (``label_map.csv``).

The map is data (``cxrdx/data/label_map.csv``: ``dataset``, ``name``, ``cxrdx``,
``code``, ``note``, ``source``), documented in the README. An empty ``cxrdx`` cell marks a
name that is deliberately not a finding (CheXpert's ``No Finding``). ``code`` is what the
name says about its finding: empty or ``1`` positive, ``-1`` uncertain (PadChest's
``costophrenic angle blunting`` for Effusion; ``--uncertain`` decides). A dataset's
readers ask this module, never a private dict, so one edit here changes every
reader. Findings a dataset does not label are *missing* (NaN), never negative.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from cxrdx.errors import LabelError
from cxrdx.labels import ALL_FINDINGS, _key, canonical, in_vocabulary_order

MAP_FILE = Path(__file__).with_name("label_map.csv")


@lru_cache(maxsize=1)
def _rows() -> tuple[dict[str, str], ...]:
    with open(MAP_FILE, newline="", encoding="utf-8") as fh:
        rows = tuple(dict(r) for r in csv.DictReader(fh))
    for r in rows:  # the file is ours: a wrong name in it is a bug, caught by the tests
        if r["cxrdx"]:
            r["cxrdx"] = canonical(r["cxrdx"])
    return rows


def datasets() -> list[str]:
    return sorted({r["dataset"] for r in _rows()})


def name_map(dataset: str) -> dict[str, str | None]:
    """The dataset's names (normalised key) -> canonical finding, or None for 'not a finding'."""
    out = {_key(r["name"]): (r["cxrdx"] or None) for r in _rows() if r["dataset"] == dataset}
    if not out:
        raise LabelError(f"label map {MAP_FILE} has no entries for dataset {dataset!r}")
    return out


def codes(dataset: str) -> dict[str, float]:
    """The dataset's names (normalised key) -> the label code they give their finding (1.0 or -1.0)."""
    return {_key(r["name"]): float(r.get("code") or 1) for r in _rows() if r["dataset"] == dataset}


def map_name(dataset: str, name: str, where: str = "") -> str | None:
    """One dataset name -> canonical finding (None: deliberately not a finding); unknown -> LabelError."""
    table = name_map(dataset)
    key = _key(name)
    if key not in table:
        raise LabelError(
            f"{where + ': ' if where else ''}{dataset} finding name {name!r} is not in the label map "
            f"{MAP_FILE.name}; known {dataset} names: {', '.join(sorted(r['name'] for r in entries(dataset)))}"
        )
    return table[key]


def entries(dataset: str | None = None) -> list[dict[str, str]]:
    """The map's rows (for one dataset, or all), for reports and the README."""
    return [dict(r) for r in _rows() if dataset is None or r["dataset"] == dataset]


def findings_of(dataset: str) -> list[str]:
    """The canonical findings a dataset labels, in ``ALL_FINDINGS`` order."""
    return in_vocabulary_order(v for v in name_map(dataset).values() if v)


def check_map() -> list[str]:
    """Problems in the map file (empty when fine): unknown canonical names, duplicate rows."""
    problems, seen = [], set()
    for r in _rows():
        if r["cxrdx"] and r["cxrdx"] not in ALL_FINDINGS:
            problems.append(f"{r['dataset']}/{r['name']}: {r['cxrdx']} is not a cxrdx finding")
        key = (r["dataset"], _key(r["name"]))
        if key in seen:
            problems.append(f"{r['dataset']}/{r['name']}: listed twice")
        seen.add(key)
        if (r.get("code") or "") not in ("", "1", "-1"):
            problems.append(f"{r['dataset']}/{r['name']}: code {r['code']!r} is not 1 or -1")
        if not r["source"]:
            problems.append(f"{r['dataset']}/{r['name']}: no source")
    return problems
