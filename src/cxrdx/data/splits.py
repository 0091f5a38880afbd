"""Patient-level train/val/test splits, optionally from NIH's official lists.

Splits are by patient, because NIH has up to 184 films of one patient and an
image-level split lets the network recognise the patient instead of the disease.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data.columns import _few
from cxrdx.data.leakage import find_leaks
from cxrdx.errors import ConfigError, DataError


def _read_list(source, what: str) -> set[str]:
    """An official list: a text file with one image name per line, or names."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.is_file():
            raise DataError(f"{what} {p} does not exist; give NIH's test_list.txt / train_val_list.txt")
        try:
            lines = p.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{what} {p} cannot be read: {exc}") from exc
        names = {os.path.basename(x.strip()) for x in lines if x.strip()}
        if not names:
            raise DataError(f"{what} {p} is empty")
        return names
    return {os.path.basename(str(x).strip()) for x in source if str(x).strip()}


def _take_patients(sizes: pd.Series, target: float) -> list:
    """The prefix of (shuffled) patients whose image count comes closest to `target`."""
    if target <= 0 or sizes.empty:
        return []
    cum = sizes.cumsum().to_numpy()
    k = int(np.argmin(np.abs(np.concatenate([[0], cum]) - target)))
    return list(sizes.index[:k])


def _shuffled_sizes(df: pd.DataFrame, seed: int, salt: int) -> pd.Series:
    sizes = df.groupby("patient", sort=True).size()
    order = np.random.default_rng([seed, salt]).permutation(len(sizes))
    return sizes.iloc[order]


def split_by_patient(
    df: pd.DataFrame,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    official_test=None,
    official_train_val=None,
) -> dict[str, pd.DataFrame]:
    """Split a label table into train/val/test with every patient in exactly one split.

    Fractions are of all images, met as closely as whole patients allow (greedy over
    patients shuffled by ``seed``). With NIH's official lists, test is exactly
    ``test_list.txt`` (``test`` is then ignored) and val is carved by patient from
    the train/val images; a list pair that shares a patient is an error.
    """
    for name, value in (("val", val), ("test", test)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"split: --{name} must be in [0, 1), got {value}")
    if val + test >= 1.0 and official_test is None:
        raise ConfigError(
            f"split: --val + --test = {val + test:.2f} leaves no training images; keep it below 1"
        )
    if "patient" not in df.columns or "image" not in df.columns:
        raise DataError("split: the table needs 'image' and 'patient' columns (read it with read_labels)")
    n = len(df)
    names = df["image"].map(os.path.basename)
    if official_test is not None or official_train_val is not None:
        test_set = _read_list(official_test, "official test list") if official_test is not None else None
        tv_set = (
            _read_list(official_train_val, "official train/val list")
            if official_train_val is not None
            else None
        )
        if test_set is not None and tv_set is not None:
            both = sorted(test_set & tv_set)
            if both:
                raise DataError(f"official lists overlap: {len(both)} image(s) in both: {_few(both)}")
        in_test = names.isin(test_set) if test_set is not None else ~names.isin(tv_set)
        in_tv = names.isin(tv_set) if tv_set is not None else ~in_test
        neither = df["image"][~in_test & ~in_tv]
        if len(neither):
            raise DataError(
                f"split: {len(neither)} image(s) of the label table are in neither official list: "
                f"{_few(neither.tolist())}; give lists that cover the table"
            )
        shared = sorted(set(df.loc[in_test, "patient"]) & set(df.loc[in_tv, "patient"]))
        if shared:
            raise DataError(
                f"official lists are not patient-disjoint: {len(shared)} patient(s) have images in both "
                f"test and train/val: {_few(shared)}; NIH's official lists are disjoint, so check the files"
            )
        test_mask = in_test.to_numpy()
        pool = df[~test_mask]
        val_patients = set(_take_patients(_shuffled_sizes(pool, seed, 1), val * n))
        val_mask = df["patient"].isin(val_patients).to_numpy() & ~test_mask
    else:
        sizes = _shuffled_sizes(df, seed, 0)
        test_patients = _take_patients(sizes, test * n)
        rest = sizes.drop(test_patients)
        val_patients = _take_patients(rest, val * n)
        test_mask = df["patient"].isin(set(test_patients)).to_numpy()
        val_mask = df["patient"].isin(set(val_patients)).to_numpy()
    train_mask = ~(test_mask | val_mask)
    out = {
        "train": df[train_mask].reset_index(drop=True),
        "val": df[val_mask].reset_index(drop=True),
        "test": df[test_mask].reset_index(drop=True),
    }
    leaks = find_leaks(out)
    assert not leaks, f"internal error: split leaked patients {list(leaks)[:5]}"
    return out
