"""The 14 NIH ChestX-ray14 findings, defined once.

Every other module addresses findings by these names; positions exist only as
the index into ``FINDINGS``. Aliases cover the spellings found in the wild
(NIH's own box table writes ``Infiltrate``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cxrdx.errors import LabelError

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NUM_FINDINGS = len(FINDINGS)
NO_FINDING = "No Finding"
INDEX: dict[str, int] = {name: i for i, name in enumerate(FINDINGS)}

_ALIASES = {
    "infiltrate": "Infiltration",
    "infiltrates": "Infiltration",
    "pleural thickening": "Pleural_Thickening",
    "pleural-thickening": "Pleural_Thickening",
    "pleuralthickening": "Pleural_Thickening",
    "pleural effusion": "Effusion",
}
_LOOKUP = {name.lower(): name for name in FINDINGS} | _ALIASES


def _key(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


def is_finding(name: str) -> bool:
    return _key(name) in _LOOKUP


def canonical(name: str) -> str:
    """Map a finding name or alias (any case) to its canonical NIH spelling."""
    found = _LOOKUP.get(_key(name))
    if found is None:
        raise LabelError(f"unknown finding {name!r}; known findings: {', '.join(FINDINGS)}")
    return found


def canonical_list(names: Iterable[str]) -> list[str]:
    """Canonicalize many names, reporting every unknown one at once."""
    names = list(names)
    unknown = sorted({str(n) for n in names if not is_finding(n)})
    if unknown:
        raise LabelError(
            f"unknown finding name(s): {', '.join(map(repr, unknown))}; known findings: {', '.join(FINDINGS)}"
        )
    return [canonical(n) for n in names]


def parse_finding_labels(text: str) -> list[str]:
    """Parse NIH's ``Finding Labels`` cell: names joined by ``|``, or ``No Finding``."""
    parts = [p.strip() for p in str(text).split("|") if p.strip()]
    if not parts or (len(parts) == 1 and _key(parts[0]) == _key(NO_FINDING)):
        return []
    return canonical_list(parts)


def to_vector(names: Iterable[str]) -> np.ndarray:
    """A 0/1 uint8 vector in FINDINGS order."""
    vec = np.zeros(NUM_FINDINGS, dtype=np.uint8)
    for name in canonical_list(names):
        vec[INDEX[name]] = 1
    return vec


def from_vector(vec: Iterable[float]) -> list[str]:
    return [name for name, v in zip(FINDINGS, vec, strict=True) if v]
