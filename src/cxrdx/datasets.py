"""Label tables, lesion boxes, patient-level splits and leakage checks.

Every table that enters the project (NIH's ``Data_Entry_2017*.csv``, a phantom
``Data_Entry.csv``, a hospital's own CSV, our split files) is read by
``read_labels`` into one *label table*: ``image``, ``path``, ``patient``, ``view``,
``age``, ``sex`` and one uint8 0/1 column per finding in ``labels.FINDINGS``
order. Splits are by patient, because NIH has up to 184 films of one patient and
an image-level split lets the network recognise the patient instead of the disease.

Patient ids are text. Purely numeric ids are written without leading zeros
(NIH's ``Patient ID`` 1 stays ``"1"``; a generic ``00012`` becomes ``"12"``), so the
same patient compares equal across tables whatever padding each file uses.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.errors import ConfigError, DataError, LabelError
from cxrdx.labels import FINDINGS, NO_FINDING, canonical, is_finding, parse_finding_labels

META_COLUMNS = ("image", "path", "patient", "view", "age", "sex")
LABEL_COLUMNS = (*META_COLUMNS, *FINDINGS)

# Accepted spellings (compared case- and space-insensitively), first match wins.
IMAGE_COLUMNS = ("image", "Image Index", "filename", "file", "path")
PATIENT_COLUMNS = ("patient", "Patient ID", "patient_id")
VIEW_COLUMNS = ("view", "View Position", "ViewPosition", "view_position", "AP/PA")
AGE_COLUMNS = ("age", "Patient Age", "patient_age")
SEX_COLUMNS = ("sex", "Patient Gender", "gender", "patient_sex")
FINDING_LABELS_COLUMN = "Finding Labels"

_BINARY = {"1": 1, "1.0": 1, "true": 1, "yes": 1, "0": 0, "0.0": 0, "false": 0, "no": 0}


def _norm(name: str) -> str:
    return " ".join(str(name).strip().lower().replace("_", " ").split())


def _pick(columns: Iterable[str], candidates: Iterable[str]) -> str | None:
    by_norm: dict[str, str] = {}
    for c in columns:
        by_norm.setdefault(_norm(c), c)
    for cand in candidates:
        if _norm(cand) in by_norm:
            return by_norm[_norm(cand)]
    return None


def _few(items: Iterable, n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _map_unique(values, func) -> np.ndarray:
    """Apply ``func`` to each distinct value once (tables repeat values a lot)."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
    mapped = np.empty(len(uniques), dtype=object)
    mapped[:] = [func(str(u)) for u in uniques]
    return mapped[codes]


_NUMERIC_ID = re.compile(r"\d+(\.0+)?")


def _patient_id(text: str) -> str:
    text = text.strip()
    if _NUMERIC_ID.fullmatch(text):
        return str(int(float(text))) if "." in text else (text.lstrip("0") or "0")
    return text


def normalize_patient(values) -> pd.Series:
    """Patient ids as text; numeric ids without leading zeros (see module doc)."""
    return pd.Series(_map_unique(values, _patient_id), dtype=object)


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; give the CSV file inside it")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{what} {path} is empty (no header, no rows)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{what} {path} cannot be read as CSV ({type(exc).__name__}: {exc})") from exc


def _label_matrix_from_finding_labels(path: Path, cells: pd.Series) -> np.ndarray:
    blank = _map_unique(cells, lambda v: not v.strip()).astype(bool)
    if blank.any():
        rows = (np.flatnonzero(blank) + 2).tolist()  # +2: header and 1-based lines
        raise DataError(
            f"{path}: empty '{FINDING_LABELS_COLUMN}' on line(s) {_few(rows)}; "
            f"write '{NO_FINDING}' for normal images"
        )
    inverse, uniques = pd.factorize(np.asarray(cells, dtype=object), use_na_sentinel=False)
    table = np.zeros((len(uniques), len(FINDINGS)), dtype=np.uint8)
    unknown: set[str] = set()
    index = {f: i for i, f in enumerate(FINDINGS)}
    for row, text in enumerate(uniques):
        try:
            names = parse_finding_labels(text)
        except LabelError:
            unknown.update(p.strip() for p in text.split("|") if p.strip() and not is_finding(p.strip()))
            continue
        for name in names:
            table[row, index[name]] = 1
    unknown.discard(NO_FINDING)
    if unknown:
        raise LabelError(
            f"{path}: unknown finding name(s) in '{FINDING_LABELS_COLUMN}': {_few(sorted(unknown), 10)}; "
            f"known findings: {', '.join(FINDINGS)} (or '{NO_FINDING}')"
        )
    return table[inverse]


def _label_matrix_from_binary(path: Path, raw: pd.DataFrame, columns: dict[str, str]) -> np.ndarray:
    out = np.zeros((len(raw), len(FINDINGS)), dtype=np.uint8)
    problems = []
    for i, finding in enumerate(FINDINGS):
        col = columns[finding]
        code = _map_unique(raw[col], lambda v: _BINARY.get(v.strip().lower(), -1)).astype(np.int8)
        bad = code < 0
        if bad.any():
            values = pd.unique(raw[col].to_numpy(dtype=object)[bad])
            shown = [repr(v) if str(v).strip() else "empty" for v in values]
            problems.append(f"column '{col}': {int(bad.sum())} value(s) not 0/1, e.g. {_few(shown)}")
        out[:, i] = code == 1
    if problems:
        raise DataError(
            f"{path}: labels must be 0 or 1; "
            + "; ".join(problems)
            + " (map uncertain or missing labels to 0 or 1 before training)"
        )
    return out


def read_labels(
    csv_path: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    require_images: bool = False,
) -> pd.DataFrame:
    """Read any supported label table into the project's label table.

    Formats (detected from the header): NIH (``Image Index``, ``Finding Labels``,
    ``Patient ID``), generic with a ``Finding Labels`` column, or generic with one
    0/1 column per finding (names in any case, aliases allowed). ``.csv.gz`` works.
    With ``images_dir`` each image is resolved to ``path`` by one recursive scan
    of that folder; ``require_images=True`` makes a missing file an error.
    """
    path = Path(csv_path)
    raw = _read_csv(path, "label table")
    if raw.empty:
        raise DataError(f"label table {path} has a header but no rows")
    columns = [str(c) for c in raw.columns]
    image_col = _pick(columns, IMAGE_COLUMNS)
    patient_col = _pick(columns, PATIENT_COLUMNS)
    labels_col = _pick(columns, (FINDING_LABELS_COLUMN,))
    binary = {}
    for c in columns:
        if c != labels_col and is_finding(c):
            name = canonical(c)
            if name in binary:
                raise DataError(f"{path}: columns '{binary[name]}' and '{c}' both mean {name}; keep one")
            binary[name] = c
    missing = []
    if image_col is None:
        missing.append(f"an image column (one of {', '.join(IMAGE_COLUMNS)})")
    if patient_col is None:
        missing.append(
            f"a patient column (one of {', '.join(PATIENT_COLUMNS)}; "
            "if every image is a different patient, copy the image column)"
        )
    if labels_col is None:
        absent = [f for f in FINDINGS if f not in binary]
        if len(absent) == len(FINDINGS):
            missing.append(f"labels: a '{FINDING_LABELS_COLUMN}' column or one 0/1 column per finding")
        elif absent:
            missing.append(f"0/1 columns for {', '.join(absent)}")
    if missing:
        raise DataError(f"{path}: missing {'; '.join(missing)}. Columns present: {', '.join(columns)}")

    images = pd.Series([str(v).strip() for v in raw[image_col]], dtype=object)
    empty = images == ""
    if empty.any():
        raise DataError(
            f"{path}: empty '{image_col}' on line(s) {_few((np.flatnonzero(empty) + 2).tolist())}"
        )
    dup = images[images.duplicated(keep=False)]
    if len(dup):
        names = dup.unique()
        raise DataError(
            f"{path}: {len(names)} image id(s) appear more than once: {_few(names)}; ids must be unique"
        )
    patients = normalize_patient(raw[patient_col])
    if (patients == "").any():
        rows = (np.flatnonzero((patients == "").to_numpy()) + 2).tolist()  # line numbers
        raise DataError(f"{path}: empty '{patient_col}' on line(s) {_few(rows)}")

    if labels_col is not None:
        matrix = _label_matrix_from_finding_labels(path, raw[labels_col].astype(str))
        fmt = "nih" if image_col == "Image Index" and patient_col == "Patient ID" else "finding-labels"
    else:
        matrix = _label_matrix_from_binary(path, raw, binary)
        fmt = "binary"

    def optional(candidates, func) -> np.ndarray:
        col = _pick(columns, candidates)
        return _map_unique(raw[col], func) if col else _map_unique([""] * len(raw), func)

    age = pd.array(optional(AGE_COLUMNS, _age), dtype="Int64")
    df = pd.DataFrame(
        {
            "image": images.to_numpy(),
            "path": "",
            "patient": patients.to_numpy(),
            "view": optional(VIEW_COLUMNS, lambda v: v.strip().upper()),
            "age": age,
            "sex": optional(SEX_COLUMNS, lambda v: v.strip().upper()),
        }
    )
    for i, finding in enumerate(FINDINGS):
        df[finding] = matrix[:, i]
    path_col = _pick(columns, ("path",))
    given = raw[path_col].astype(str).str.strip().to_numpy() if path_col and path_col != image_col else None
    df["path"] = _resolve_paths(path, df["image"].to_numpy(), given, images_dir, require_images)
    df.attrs["format"] = fmt
    df.attrs["source"] = str(path)
    return df


_AGE = re.compile(r"\s*(\d+(?:\.\d*)?)")


def _age(text: str):
    """Years as an int, from '57', '57.0' or DICOM-like '057Y'; None if absent."""
    m = _AGE.match(text)
    return round(float(m.group(1))) if m else None


def index_images(images_dir: Path) -> tuple[dict[str, str], set[str]]:
    """One recursive scan: file name -> path, and the names found more than once."""
    found: dict[str, str] = {}
    dups: set[str] = set()
    for root, _dirs, files in os.walk(images_dir):
        for name in files:
            if name.startswith("."):
                continue
            if name in found:
                dups.add(name)
            else:
                found[name] = os.path.join(root, name)
    return found, dups


def _resolve_paths(
    csv_path: Path,
    images: np.ndarray,
    given: np.ndarray | None,
    images_dir,
    require: bool,
) -> list[str]:
    out = [""] * len(images)
    if given is not None:  # a `path` column: absolute, or relative to the CSV's folder
        for i, p in enumerate(given):
            if p:
                cand = Path(p) if os.path.isabs(p) else csv_path.parent / p
                if cand.is_file():
                    out[i] = str(cand)
    if images_dir is not None:
        root = Path(images_dir)
        if not root.is_dir():
            raise DataError(f"images folder {root} does not exist or is not a folder; check --images")
        index, dups = index_images(root)
        ambiguous = []
        for i, image in enumerate(images):
            if out[i]:
                continue
            if "/" in image or "\\" in image:
                cand = root / image
                if cand.is_file():
                    out[i] = str(cand)
                    continue
            name = os.path.basename(image)
            if name in dups:
                ambiguous.append(name)
            elif name in index:
                out[i] = index[name]
        if ambiguous:
            raise DataError(
                f"{root}: {len(ambiguous)} image name(s) of {csv_path} occur in several subfolders "
                f"({_few(ambiguous)}); write the image column as paths relative to {root}"
            )
    if require:
        missing = [images[i] for i, p in enumerate(out) if not p]
        if missing:
            where = (
                f"under {images_dir}" if images_dir is not None else "(no images folder given; pass --images)"
            )
            raise DataError(
                f"{csv_path}: {len(missing)} of {len(images)} image(s) not found {where}: {_few(missing)}"
            )
    return out


def write_labels(df: pd.DataFrame, path: str | os.PathLike, absolute_paths: bool = False) -> Path:
    """Write a label table in the generic format (``.csv`` or ``.csv.gz``).

    ``path`` is left out unless ``absolute_paths``: split files then stay valid
    when the images folder moves, and ``read_labels(..., images_dir)`` resolves them.
    """
    missing = [c for c in LABEL_COLUMNS if c not in df.columns and c != "path"]
    if missing:
        raise DataError(f"cannot write {path}: the table lacks column(s) {', '.join(missing)}")
    out = df[[c for c in LABEL_COLUMNS if c != "path"]].copy()
    if absolute_paths:
        paths = df["path"] if "path" in df.columns else pd.Series([""] * len(df))
        out.insert(1, "path", [str(Path(p).resolve()) if p else "" for p in paths])
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(path, index=False)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc}") from exc
    return path


# --------------------------------------------------------------------------- boxes

BOX_COLUMNS = ("image", "finding", "x", "y", "w", "h")
_BOX_ALIASES = {
    "image": ("Image Index", "image"),
    "finding": ("Finding Label", "finding"),
    "x": ("Bbox [x", "x"),
    "y": ("y",),
    "w": ("w",),
    "h": ("h]", "h"),
}


def read_bboxes(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Read NIH's ``BBox_List_2017.csv(.gz)`` or a phantom ``BBox_List.csv``.

    Returns ``image``, ``finding`` (canonical: NIH's ``Infiltrate`` becomes
    ``Infiltration``), ``x``, ``y``, ``w``, ``h`` (float pixels). A table with a
    header and no boxes is valid (a phantom set with no findings).
    """
    path = Path(csv_path)
    raw = _read_csv(path, "box table")
    columns = [str(c) for c in raw.columns if not str(c).startswith("Unnamed")]
    picked = {key: _pick(columns, names) for key, names in _BOX_ALIASES.items()}
    missing = [key for key, col in picked.items() if col is None]
    if missing:
        raise DataError(
            f"{path}: missing box column(s) for {', '.join(missing)}; expected NIH's "
            f"'Image Index, Finding Label, Bbox [x, y, w, h]' or '{', '.join(BOX_COLUMNS)}'. "
            f"Columns present: {', '.join(columns)}"
        )
    out = pd.DataFrame({"image": raw[picked["image"]].astype(str).str.strip()})
    names = raw[picked["finding"]].astype(str).str.strip()
    unknown = sorted({n for n in names.unique() if not is_finding(n)})
    if unknown:
        raise LabelError(
            f"{path}: unknown finding name(s) in boxes: {_few(unknown, 10)}; known: {', '.join(FINDINGS)}"
        )
    mapping = {n: canonical(n) for n in names.unique()}
    out["finding"] = names.map(mapping)
    for key in ("x", "y", "w", "h"):
        values = pd.to_numeric(raw[picked[key]], errors="coerce")
        bad = values.isna()
        if bad.any():
            raise DataError(
                f"{path}: column '{picked[key]}' has non-numeric value(s) on line(s) "
                f"{_few((np.flatnonzero(bad) + 2).tolist())}"
            )
        out[key] = values.astype(float)
    bad = (out["w"] <= 0) | (out["h"] <= 0)
    if bad.any():
        raise DataError(
            f"{path}: boxes need w > 0 and h > 0; line(s) {_few((np.flatnonzero(bad) + 2).tolist())}"
        )
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- splits


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


# --------------------------------------------------------------------------- stats


def label_stats(df: pd.DataFrame) -> dict:
    """Counts for a label table: images, patients, positives per finding, normals."""
    positives = {f: int(df[f].sum()) for f in FINDINGS}
    normal = int((df[list(FINDINGS)].sum(axis=1) == 0).sum())
    return {
        "images": len(df),
        "patients": int(df["patient"].nunique()),
        "positives": positives,
        "no_finding": normal,
        "resolved": int((df["path"] != "").sum()) if "path" in df.columns else 0,
    }


def format_stats(stats: dict) -> str:
    n = stats["images"]
    lines = [
        f"images    {n:,}",
        f"patients  {stats['patients']:,}",
        "",
        f"{'finding':<20}{'positives':>10}{'prevalence':>12}",
    ]
    for f, c in sorted(stats["positives"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"{f:<20}{c:>10,}{c / n:>12.2%}")
    lines.append(f"{NO_FINDING:<20}{stats['no_finding']:>10,}{stats['no_finding'] / n:>12.2%}")
    return "\n".join(lines)


def plot_prevalence(stats: dict, out: str | os.PathLike, title: str = "") -> Path:
    """A horizontal bar plot of positives per finding (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = sorted(stats["positives"].items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4477aa")
    n = stats["images"]
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:,} ({v / n:.1%})", va="center", fontsize=8)
    ax.set_xlabel("positive images")
    ax.set_title(title or f"{n:,} images, {stats['patients']:,} patients, {stats['no_finding']:,} No Finding")
    ax.margins(x=0.25)
    fig.tight_layout()
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    except OSError as exc:
        raise DataError(f"cannot write plot {out}: {exc}") from exc
    return out


# --------------------------------------------------------------------------- CLI


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "stats",
        help="counts of images, patients and positives per finding in a label table",
        description="Print images, patients and positives/prevalence per finding of a label table "
        "(NIH Data_Entry, phantom Data_Entry.csv, or a generic CSV); optionally a bar plot.",
    )
    p.add_argument("--labels", required=True, type=Path, help="label table (.csv or .csv.gz)")
    p.add_argument("--images", type=Path, help="images folder: also count how many files are found")
    p.add_argument("--plot", type=Path, help="write a bar plot PNG here")
    p.set_defaults(func=_run_stats)

    p = subparsers.add_parser(
        "split",
        help="patient-level train/val/test split of a label table",
        description="Write OUT/train.csv, val.csv, test.csv (generic format) with every patient in "
        "exactly one split. With NIH's official lists, test = test_list.txt and val is carved "
        "from train_val_list.txt by patient.",
    )
    p.add_argument("--labels", required=True, type=Path, help="label table (.csv or .csv.gz)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--val", type=float, default=0.1, help="fraction of images for validation (default 0.1)")
    p.add_argument("--test", type=float, default=0.2, help="fraction of images for test (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--official-test", type=Path, help="NIH test_list.txt")
    p.add_argument("--official-train-val", type=Path, help="NIH train_val_list.txt")
    p.add_argument("--images", type=Path, help="images folder (needed only with --absolute-paths)")
    p.add_argument("--absolute-paths", action="store_true", help="also write each image's absolute path")
    p.set_defaults(func=_run_split)

    p = subparsers.add_parser(
        "check-leakage",
        help="check that no patient appears in more than one label table",
        description="Exit 0 if no patient (and no image) is in more than one of the given tables; "
        "exit 1 naming them otherwise.",
    )
    p.add_argument(
        "tables", nargs="+", type=Path, help="two or more label tables (e.g. train.csv val.csv test.csv)"
    )
    p.add_argument("--show", type=int, default=10, help="how many leaking patients to name (default 10)")
    p.set_defaults(func=_run_check_leakage)


def _run_stats(args: argparse.Namespace) -> int:
    df = read_labels(args.labels, args.images)
    stats = label_stats(df)
    print(f"{args.labels} ({df.attrs.get('format')} format)")
    print(format_stats(stats))
    if args.images is not None:
        print(f"\nimage files found under {args.images}: {stats['resolved']:,} of {stats['images']:,}")
    if args.plot is not None:
        out = plot_prevalence(stats, args.plot, title=f"{args.labels.name}: {stats['images']:,} images")
        print(f"plot written to {out}")
    return 0


def _run_split(args: argparse.Namespace) -> int:
    if args.absolute_paths and args.images is None:
        raise ConfigError("split: --absolute-paths needs --images DIR to find the files")
    df = read_labels(args.labels, args.images, require_images=args.absolute_paths)
    splits = split_by_patient(df, args.val, args.test, args.seed, args.official_test, args.official_train_val)
    for name, part in splits.items():
        write_labels(part, args.out / f"{name}.csv", absolute_paths=args.absolute_paths)
    n = len(df)
    print(f"wrote {', '.join(str(args.out / f'{k}.csv') for k in splits)}")
    print(f"{'':<20}" + "".join(f"{k:>12}" for k in splits))
    print(f"{'images':<20}" + "".join(f"{len(v):>12,}" for v in splits.values()))
    print(f"{'  fraction':<20}" + "".join(f"{len(v) / n:>12.1%}" for v in splits.values()))
    print(f"{'patients':<20}" + "".join(f"{v['patient'].nunique():>12,}" for v in splits.values()))
    for f in FINDINGS:
        print(f"{f:<20}" + "".join(f"{int(v[f].sum()):>12,}" for v in splits.values()))
    empty = [f"{f} in {k}" for k, v in splits.items() if len(v) for f in FINDINGS if int(v[f].sum()) == 0]
    if empty:
        print(f"warning: no positives for {_few(empty, 8)}; AUROC is undefined there", file=sys.stderr)
    return 0


def _run_check_leakage(args: argparse.Namespace) -> int:
    if len(args.tables) < 2:
        raise ConfigError("check-leakage: give at least two label tables to compare")
    if len({str(t) for t in args.tables}) < len(args.tables):
        raise ConfigError("check-leakage: the same file is given twice")
    tables = {str(t): read_labels(t) for t in args.tables}
    leaks = find_leaks(tables)
    overlap = find_image_overlap(tables)
    total = sum(t["patient"].nunique() for t in tables.values())
    if not leaks and not overlap:
        print(f"no patient in more than one file ({len(tables)} files, {total:,} patients)")
        return 0
    if leaks:
        print(f"LEAK: {len(leaks)} patient(s) appear in more than one file:")
        for patient, names in list(leaks.items())[: args.show]:
            print(f"  patient {patient}: {', '.join(names)}")
        if len(leaks) > args.show:
            print(f"  ... and {len(leaks) - args.show} more")
    if overlap:
        print(f"LEAK: {len(overlap)} image(s) appear in more than one file:")
        for image, names in list(overlap.items())[: args.show]:
            print(f"  image {image}: {', '.join(names)}")
        if len(overlap) > args.show:
            print(f"  ... and {len(overlap) - args.show} more")
    return 1
