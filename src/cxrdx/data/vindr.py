"""VinDr-CXR ``train.csv``: one row per image x radiologist x finding box, aggregated into image labels.

Columns: ``image_id``, ``class_name`` (14 findings or ``No finding``), ``rad_id``
(the reader), ``x_min``, ``y_min``, ``x_max``, ``y_max`` (blank for ``No finding``).
Rule (stated, ``rule=``): ``"any"`` (default) makes a finding positive when at least
one reader marked it on the image; ``"majority"`` when more than half of the image's
readers did (2 of 3). Every other VinDr finding is negative: each reader reviewed the
whole image. VinDr ships no patient ids, so each image is its own patient
(``attrs['notes']`` says so). Boxes: ``read_boxes`` (the box table, one row per
reader's box, with ``reader``). Image: ``image_id`` (a ``.dicom``, ``.png`` or ``.jpg``
file of that stem under the images folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data.columns import Parsed, _few, _pick, require_columns
from cxrdx.data.label_map import findings_of, map_name
from cxrdx.data.readers import ReadOptions, register
from cxrdx.errors import ConfigError, DataError

SIGNATURE = ("image_id", "class_name", "rad_id")
RULES = ("any", "majority")


def _mapped(path: Path, raw: pd.DataFrame, cols: dict[str, str]) -> np.ndarray:
    names = raw[cols["class_name"]].astype(str).str.strip()
    mapping = {}
    for n in names.unique():
        try:
            mapping[n] = map_name("vindr", n, str(path))
        except Exception:
            rows = np.flatnonzero((names == n).to_numpy())
            raise DataError(
                f"{path}: line(s) {_few((rows + 2).tolist())}: VinDr class_name {n!r} is not in the label map"
            ) from None
    return names.map(mapping).to_numpy(dtype=object)


def read(path: Path, raw: pd.DataFrame, options: ReadOptions | None = None) -> Parsed:
    rule = (options or ReadOptions()).vindr_rule
    if rule not in RULES:
        raise ConfigError(f"VinDr aggregation rule must be one of {', '.join(RULES)}, not {rule!r}")
    cols = require_columns(path, [str(c) for c in raw.columns], SIGNATURE, "VinDr-CXR")
    image = raw[cols["image_id"]].astype(str).str.strip().to_numpy(dtype=object)
    empty = image == ""
    if empty.any():
        raise DataError(f"{path}: empty 'image_id' on line(s) {_few((np.flatnonzero(empty) + 2).tolist())}")
    finding = _mapped(path, raw, cols)
    reader = raw[cols["rad_id"]].astype(str).str.strip().to_numpy(dtype=object)
    ids, first = np.unique(image, return_index=True)
    order = np.argsort(first)
    ids, first = ids[order], first[order]  # images in file order
    pos = pd.Series(np.arange(len(ids)), index=ids)
    readers = pd.DataFrame({"image": image, "reader": reader}).drop_duplicates()
    n_readers = readers.groupby("image")["reader"].nunique().reindex(ids).to_numpy()
    marks = pd.DataFrame({"image": image, "finding": finding, "reader": reader})
    marks = marks[marks["finding"].notna()].drop_duplicates()
    votes = marks.groupby(["image", "finding"])["reader"].nunique()
    labels = {}
    for f in findings_of("vindr"):
        v = np.zeros(len(ids), dtype=np.float32)
        if f in votes.index.get_level_values(1):
            sub = votes.xs(f, level="finding")
            count = np.zeros(len(ids))
            count[pos[sub.index].to_numpy()] = sub.to_numpy()
            v = (count >= 1 if rule == "any" else count > n_readers / 2).astype(np.float32)
        labels[f] = v
    return Parsed(
        fmt="vindr",
        image=ids.astype(object),
        patient=ids.astype(object),
        labels=labels,
        lines=first + 2,
        notes=[
            f"VinDr-CXR has no patient ids: each image counts as its own patient; labels: a finding is "
            f"positive when {'any reader' if rule == 'any' else 'most readers'} marked it"
        ],
    )


def read_boxes(path: Path, raw: pd.DataFrame) -> pd.DataFrame:
    """The box table (``image``, ``finding``, ``x``, ``y``, ``w``, ``h``, ``reader``) in the image's pixels."""
    cols = require_columns(
        path, [str(c) for c in raw.columns], (*SIGNATURE, "x_min", "y_min", "x_max", "y_max"), "VinDr-CXR"
    )
    finding = _mapped(path, raw, cols)
    coords = {
        k: pd.to_numeric(raw[cols[k]], errors="coerce").to_numpy()
        for k in ("x_min", "y_min", "x_max", "y_max")
    }
    has = pd.notna(finding)
    missing = has & np.isnan(np.stack(list(coords.values()))).any(axis=0)
    if missing.any():
        raise DataError(
            f"{path}: finding rows need numeric x_min, y_min, x_max, y_max; line(s) "
            f"{_few((np.flatnonzero(missing) + 2).tolist())}"
        )
    out = pd.DataFrame(
        {
            "image": raw[cols["image_id"]].astype(str).str.strip().to_numpy()[has],
            "finding": finding[has],
            "x": coords["x_min"][has],
            "y": coords["y_min"][has],
            "w": (coords["x_max"] - coords["x_min"])[has],
            "h": (coords["y_max"] - coords["y_min"])[has],
            "reader": raw[cols["rad_id"]].astype(str).str.strip().to_numpy()[has],
        }
    )
    bad = (out["w"] <= 0) | (out["h"] <= 0)
    if bad.any():
        lines = np.flatnonzero(has)[bad.to_numpy()] + 2
        raise DataError(f"{path}: boxes need x_max > x_min and y_max > y_min; line(s) {_few(lines.tolist())}")
    return out.reset_index(drop=True)


def detect(path: Path, columns: list[str]) -> bool:
    return all(_pick(columns, (c,)) for c in SIGNATURE)


register("vindr", detect=detect, read=read, order=10, layout="VinDr-CXR (image_id, class_name, rad_id)")
