"""Leakage checks: the same patient (or image) in more than one table."""

from __future__ import annotations

import pandas as pd


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
