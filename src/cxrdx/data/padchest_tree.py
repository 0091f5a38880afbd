"""PadChest's published label hierarchy (``padchest_tree.csv``): a term is a kind of each of its ancestors.

PadChest's report labels are terms of a tree published with the dataset (Bustos et al.,
PadChest, Med Image Anal 2020: 174 radiographic findings and 19 differential diagnoses,
mapped onto UMLS); the file keeps the authors' own tree, one (term, parent) edge per row,
with its source in its header. ``padchest.py`` maps a term through the label map and,
when it has no entry there, through its ancestors: ``callus rib fracture`` -> ``rib
fracture`` -> ``fracture`` -> Fracture. Names match exactly (``labels._key``: case and
spacing), never as substrings: ``pseudonodule`` is not a ``nodule``, ``subcutaneous
emphysema`` not an ``emphysema``.
"""

from __future__ import annotations

import csv
from functools import cache, lru_cache
from pathlib import Path

from cxrdx.labels import _key

TREE_FILE = Path(__file__).with_name("padchest_tree.csv")
ROOTS = ("radiological finding", "differential diagnosis")  # the sections; not findings themselves


@lru_cache(maxsize=1)
def parents() -> dict[str, tuple[str, ...]]:
    """Term key -> its parents' keys (as published; roots have none)."""
    with open(TREE_FILE, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    out: dict[str, list[str]] = {}
    for r in rows:
        term = out.setdefault(_key(r["term"]), [])
        if r["parent"] and _key(r["parent"]) not in (_key(x) for x in ROOTS):
            term.append(_key(r["parent"]))
    return {k: tuple(v) for k, v in out.items()}


@cache
def lineage(term: str) -> tuple[str, ...]:
    """The term's key, then every ancestor's key (breadth first, each once); unknown terms: just the key."""
    table = parents()
    seen: list[str] = [_key(term)]
    i = 0
    while i < len(seen):
        for p in table.get(seen[i], ()):
            if p not in seen:
                seen.append(p)
        i += 1
    return tuple(seen)
