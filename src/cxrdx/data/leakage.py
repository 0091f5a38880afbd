"""Leakage checks: the same patient (or image) in more than one table."""

from __future__ import annotations

import pandas as pd

from cxrdx.errors import DataError

ALLOW_FLAG = "--allow-patient-overlap"


def find_leaks(tables: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """Patients that appear in more than one table: patient -> table names."""
    where: dict[str, list[str]] = {}
    for name, table in tables.items():
        for patient in pd.unique(table["patient"].astype(str)):
            where.setdefault(patient, []).append(name)
    return {p: names for p, names in sorted(where.items()) if len(names) > 1}


def find_image_overlap(tables: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """Image ids that appear in more than one table: image -> table names."""
    where: dict[str, list[str]] = {}
    for name, table in tables.items():
        for image in pd.unique(table["image"].astype(str)):
            where.setdefault(image, []).append(name)
    return {i: names for i, names in sorted(where.items()) if len(names) > 1}


def check_patient_overlap(tables: dict[str, pd.DataFrame], *, allow: bool, source: str) -> str | None:
    """Refuse tables (splits) that share a patient, listing them; with ``allow`` return the warning instead.

    None when the splits are patient-disjoint. The returned text is what callers print and record
    (in the cache, the checkpoint, the report), so an allowed overlap is never silent.
    """
    leaks = find_leaks(tables)
    if not leaks:
        return None
    shown = "; ".join(f"{p} (in {' and '.join(names)})" for p, names in list(leaks.items())[:10])
    more = f"; and {len(leaks) - 10} more" if len(leaks) > 10 else ""
    text = f"{source}: {len(leaks)} patient(s) appear in more than one split (patient leakage): {shown}{more}"
    if not allow:
        raise DataError(
            f"{text}. Images of one patient in two splits make validation and test figures optimistic; "
            f"split by patient (`cxrdx split`), or pass {ALLOW_FLAG} to go on anyway (it is recorded)"
        )
    return text
