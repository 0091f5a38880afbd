"""The finding vocabulary, defined once: the 14 NIH ChestX-ray14 findings and the others public datasets label.

``FINDINGS`` is the 14 NIH names, the default model output order; positions exist
only as the index into it. ``EXTRA_FINDINGS`` are the findings other datasets label
that NIH does not (CheXpert's Lung Opacity, Fracture, ...; VinDr-CXR's Aortic
enlargement, ...); ``ALL_FINDINGS`` is both, in that order, and is what a checkpoint's
labels or a label table's findings may name. Aliases cover the spellings found in the
wild (NIH's own box table writes ``Infiltrate``); how each dataset's own names map onto
these is data: ``cxrdx/data/label_map.csv``.
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
EXTRA_FINDINGS: tuple[str, ...] = (
    "Enlarged_Cardiomediastinum",
    "Lung_Opacity",
    "Lung_Lesion",
    "Nodule_Mass",
    "Pleural_Other",
    "Fracture",
    "Support_Devices",
    "Aortic_Enlargement",
    "Calcification",
    "ILD",
    "Other_Lesion",
)
ALL_FINDINGS: tuple[str, ...] = (*FINDINGS, *EXTRA_FINDINGS)
NO_FINDING = "No Finding"
INDEX: dict[str, int] = {name: i for i, name in enumerate(FINDINGS)}
ALL_INDEX: dict[str, int] = {name: i for i, name in enumerate(ALL_FINDINGS)}

_ALIASES = {
    "infiltrate": "Infiltration",
    "infiltrates": "Infiltration",
    "pleural thickening": "Pleural_Thickening",
    "pleural-thickening": "Pleural_Thickening",
    "pleuralthickening": "Pleural_Thickening",
    "pleural effusion": "Effusion",
    "nodule/mass": "Nodule_Mass",
    "nodule or mass": "Nodule_Mass",
    "interstitial lung disease": "ILD",
    "support device": "Support_Devices",
}


def _key(name: str) -> str:
    return " ".join(str(name).strip().lower().replace("_", " ").split())


_LOOKUP = {_key(name): name for name in ALL_FINDINGS} | {_key(k): v for k, v in _ALIASES.items()}


def is_finding(name: str) -> bool:
    """A name (or alias) of any finding in ``ALL_FINDINGS``."""
    return _key(name) in _LOOKUP


def is_nih_finding(name: str) -> bool:
    """A name (or alias) of one of the 14 NIH findings."""
    return _LOOKUP.get(_key(name)) in INDEX


def canonical(name: str) -> str:
    """Map a finding name or alias (any case, ``_`` or space) to its canonical spelling."""
    found = _LOOKUP.get(_key(name))
    if found is None:
        raise LabelError(f"unknown finding {name!r}; known findings: {', '.join(ALL_FINDINGS)}")
    return found


def canonical_list(names: Iterable[str]) -> list[str]:
    """Canonicalize many names, reporting every unknown one at once."""
    names = list(names)
    unknown = sorted({str(n) for n in names if not is_finding(n)})
    if unknown:
        raise LabelError(
            f"unknown finding name(s): {', '.join(map(repr, unknown))}; "
            f"known findings: {', '.join(ALL_FINDINGS)}"
        )
    return [canonical(n) for n in names]


def in_vocabulary_order(names: Iterable[str]) -> list[str]:
    """Canonical names, deduplicated, in ``ALL_FINDINGS`` order (NIH's 14 first)."""
    wanted = set(canonical_list(names))
    return [f for f in ALL_FINDINGS if f in wanted]


def parse_finding_labels(text: str) -> list[str]:
    """Parse NIH's ``Finding Labels`` cell: names of the 14 NIH findings joined by ``|``, or ``No Finding``."""
    parts = [p.strip() for p in str(text).split("|") if p.strip()]
    if not parts or (len(parts) == 1 and _key(parts[0]) == _key(NO_FINDING)):
        return []
    other = sorted({p for p in parts if not is_nih_finding(p)})
    if other:
        raise LabelError(
            f"unknown finding name(s): {', '.join(map(repr, other))}; a 'Finding Labels' cell names "
            f"NIH's findings: {', '.join(FINDINGS)}"
        )
    return canonical_list(parts)


def to_vector(names: Iterable[str]) -> np.ndarray:
    """A 0/1 uint8 vector in FINDINGS order."""
    vec = np.zeros(NUM_FINDINGS, dtype=np.uint8)
    for name in canonical_list(names):
        vec[INDEX[name]] = 1
    return vec


def from_vector(vec: Iterable[float]) -> list[str]:
    return [name for name, v in zip(FINDINGS, vec, strict=True) if v]
