"""The project's label table: reading any supported source into it, resolving image paths, writing it.

Every table that enters the project (NIH's ``Data_Entry_2017*.csv``, a phantom
``Data_Entry.csv``, CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR, NIH's Google
re-labels, a hospital's own CSV, our split files) is read by ``read_labels`` into one
*label table*: ``image``, ``path``, ``patient``, ``view``, ``age``, ``sex`` (and ``study``
where the dataset records studies) and one float32 column per finding the dataset labels (``attrs["findings"]``, in
``labels.ALL_FINDINGS`` order): 1 positive, 0 negative, NaN unlabelled. Uncertain
labels (-1) follow the ``uncertain`` policy of the CheXpert paper (``ignore`` -> NaN,
``zeros``, ``ones``; ``keep`` leaves -1 for counting and caching). CheXpert and MIMIC-CXR
cells the labeler left blank on a row that is not the publisher's No Finding ("not mentioned")
follow the ``blank`` policy (``negative``, the default and the CheXpert paper's baselines, or
``unlabelled``; ``keep`` leaves ``generic.NOT_MENTIONED`` for counting and caching); the
README says what each does to the numbers. NIH tables label all 14. One module per source decodes the cells (``nih``, ``generic``, ``chexpert``,
``mimic``, ``padchest``, ``vindr``, ``google``); this module detects which (or takes
``dataset=``) and does what every source shares.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data import chexpert, generic, google, mimic, nih, padchest, vindr
from cxrdx.data.columns import (
    AGE_COLUMNS,
    IMAGE_COLUMNS,
    PATIENT_COLUMNS,
    SEX_COLUMNS,
    VIEW_COLUMNS,
    Parsed,
    _age,
    _few,
    _map_unique,
    _pick,
    _read_csv,
    normalize_patient,
)
from cxrdx.data.generic import BLANK_POLICIES, DEFAULT_BLANK, apply_blank, check_blank  # noqa: F401 (re-exported)
from cxrdx.data.nih import FINDING_LABELS_COLUMN
from cxrdx.data.views import filter_views
from cxrdx.errors import ConfigError, DataError
from cxrdx.labels import ALL_FINDINGS, FINDINGS
from cxrdx.settings import DATASETS

META_COLUMNS = ("image", "path", "patient", "view", "age", "sex")  # + "study" where the dataset has studies
LABEL_COLUMNS = (*META_COLUMNS, *FINDINGS)
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones", "keep")
_SIGNATURES = (  # checked in this order; the first whose columns are all present wins
    ("vindr", vindr.SIGNATURE),
    ("padchest", padchest.SIGNATURE),
    ("mimic", mimic.SIGNATURE),
    ("google", google.SIGNATURE),
    ("chexpert", chexpert.SIGNATURE),
)


def detect_layout(path: Path, columns: list[str]) -> str:
    """Which dataset layout a header is (see ``DATASETS``); DataError when none fits."""
    for name, needed in _SIGNATURES:
        if all(_pick(columns, (c,)) for c in needed):
            return name
    if _pick(columns, (FINDING_LABELS_COLUMN,)):
        return "nih"
    if _pick(columns, ("Path",)) and _pick(columns, ("Pleural Effusion",)):
        return "chexpert"
    if _pick(columns, IMAGE_COLUMNS) and generic.finding_columns(path, columns):
        return "generic"
    raise DataError(
        f"{path}: unknown label table layout. Known layouts: NIH (Image Index, Finding Labels, Patient ID), "
        "Google NIH re-labels (+ Set Id, Airspace opacity), CheXpert (Path, Frontal/Lateral, observations), "
        "MIMIC-CXR-JPG (subject_id, study_id, observations), PadChest (ImageID, ImageDir, Labels), VinDr-CXR "
        f"(image_id, class_name, rad_id), or generic (an image column, a patient column, finding columns). "
        f"Columns present: {', '.join(columns)}. Pass --dataset NAME to say which it is"
    )


def _read_generic(path: Path, raw: pd.DataFrame, mixed_no_finding: str) -> Parsed:
    """NIH ``Finding Labels`` tables and generic finding-column tables (the two original formats)."""
    columns = [str(c) for c in raw.columns]
    image_col = _pick(columns, IMAGE_COLUMNS)
    patient_col = _pick(columns, PATIENT_COLUMNS)
    labels_col = _pick(columns, (FINDING_LABELS_COLUMN,))
    binary = generic.finding_columns(path, columns, skip=labels_col)
    missing = []
    if image_col is None:
        missing.append(f"an image column (one of {', '.join(IMAGE_COLUMNS)})")
    if patient_col is None:
        missing.append(
            f"a patient column (one of {', '.join(PATIENT_COLUMNS)}; "
            "if every image is a different patient, copy the image column)"
        )
    if labels_col is None and not binary:
        missing.append(
            f"labels: a '{FINDING_LABELS_COLUMN}' column or finding columns (1 / 0 / -1 / blank) named as "
            f"any of {', '.join(ALL_FINDINGS)}"
        )
    if missing:
        raise DataError(f"{path}: missing {'; '.join(missing)}. Columns present: {', '.join(columns)}")
    images = np.asarray([str(v).strip() for v in raw[image_col]], dtype=object)
    if labels_col is not None:
        matrix = nih.label_matrix(
            path, raw[labels_col].astype(str), images, mixed_no_finding=mixed_no_finding
        )
        labels = {f: matrix[:, i].astype(np.float32) for i, f in enumerate(FINDINGS)}
        fmt = nih.format_name(image_col, patient_col)
    else:
        labels = generic.code_columns(path, raw, binary)
        fmt = "binary" if set(binary) == set(FINDINGS) else "generic"

    def optional(candidates, func) -> np.ndarray | None:
        col = _pick(columns, candidates)
        return _map_unique(raw[col], func) if col else None

    path_col = _pick(columns, ("path",))
    given = raw[path_col].astype(str).str.strip().to_numpy() if path_col and path_col != image_col else None
    study_col = _pick(columns, ("study", "study_id", "Study ID"))
    return Parsed(
        fmt=fmt,
        image=images,
        patient=normalize_patient(raw[patient_col]).to_numpy(),
        study=optional((study_col,), str.strip) if study_col else None,
        view=optional(VIEW_COLUMNS, lambda v: v.strip().upper()),
        age=optional(AGE_COLUMNS, _age),
        sex=optional(SEX_COLUMNS, lambda v: v.strip().upper()),
        labels=labels,
        given_path=given,
    )


def _check_image_paths(path: Path, images: np.ndarray, lines: np.ndarray) -> None:
    """Image ids are names or paths *inside* the dataset root: absolute or ``..`` escapes are errors."""
    bad = []
    for i, image in enumerate(images):
        if "/" in image or "\\" in image or image.startswith(".."):
            norm = posixpath.normpath(image.replace("\\", "/"))
            if (
                norm.startswith("/")
                or norm == ".."
                or norm.startswith("../")
                or (len(norm) > 1 and norm[1] == ":")
            ):
                bad.append(f"line {lines[i]}: {image!r}")
    if bad:
        raise DataError(
            f"{path}: {len(bad)} image path(s) escape the dataset root (absolute, or climbing out with '..'): "
            f"{_few(bad)}; image paths must be relative to the images folder"
        )


def read_labels(
    csv_path: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    require_images: bool = False,
    *,
    mixed_no_finding: str = "error",
    dataset: str | None = None,
    uncertain: str = "ignore",
    views: str | list[str] | None = None,
    vindr_rule: str = "any",
    blank: str = DEFAULT_BLANK,
) -> pd.DataFrame:
    """Read any supported label table into the project's label table (module doc).

    The layout is detected from the header, or forced with ``dataset`` (one of
    ``DATASETS``). ``.csv.gz`` works. With ``images_dir`` each image is resolved to
    ``path`` (a path relative to that folder, else one recursive scan by file name);
    ``require_images=True`` makes a missing file an error. ``views`` filters rows
    (``"frontal"``, ``"all"``/None, or ``"PA,AP"``; see ``views.py``). ``vindr_rule``:
    ``any`` or ``majority`` reader. A ``Finding Labels`` cell mixing ``No Finding``
    with findings is a ``LabelError`` unless ``mixed_no_finding="keep"``. ``blank``: what a
    CheXpert / MIMIC-CXR "not mentioned" cell means (``BLANK_POLICIES``; module doc).
    """
    path = Path(csv_path)
    if uncertain not in UNCERTAIN_POLICIES:
        raise ConfigError(f"--uncertain {uncertain!r}: choose one of {', '.join(UNCERTAIN_POLICIES[:3])}")
    check_blank(blank)
    if dataset is not None and dataset not in DATASETS:
        raise ConfigError(f"--dataset {dataset!r} is unknown; choose one of {', '.join(DATASETS)}")
    raw = _read_csv(path, "label table")
    if raw.empty:
        raise DataError(f"label table {path} has a header but no rows")
    columns = [str(c) for c in raw.columns]
    layout = dataset or detect_layout(path, columns)
    if layout in ("nih", "generic"):
        parsed = _read_generic(path, raw, mixed_no_finding)
    elif layout == "vindr":
        parsed = vindr.read(path, raw, rule=vindr_rule)
    else:
        parsed = {"chexpert": chexpert, "mimic": mimic, "padchest": padchest, "google": google}[layout].read(
            path, raw
        )
    return _finish(path, parsed, images_dir, require_images, (uncertain, blank), views, layout)


def _finish(path, parsed: Parsed, images_dir, require_images, policies, views, layout) -> pd.DataFrame:
    uncertain, blank = policies
    n = len(parsed.image)
    lines = parsed.lines if parsed.lines is not None else np.arange(n) + 2
    images = pd.Series(parsed.image, dtype=object)
    empty = (images == "").to_numpy()
    if empty.any():
        raise DataError(f"{path}: empty image id on line(s) {_few(lines[empty].tolist())}")
    dup = images[images.duplicated(keep=False)]
    if len(dup):
        names = dup.unique()
        raise DataError(
            f"{path}: {len(names)} image id(s) appear more than once: {_few(names)}; ids must be unique"
        )
    patients = pd.Series(parsed.patient, dtype=object).fillna("").astype(str)
    if (patients == "").any():
        raise DataError(
            f"{path}: empty patient id on line(s) {_few(lines[(patients == '').to_numpy()].tolist())}"
        )
    _check_image_paths(path, parsed.image, lines)

    def col(values) -> np.ndarray:
        return np.full(n, "", dtype=object) if values is None else np.asarray(values, dtype=object)

    df = pd.DataFrame(
        {
            "image": images.to_numpy(),
            "path": "",
            "patient": patients.to_numpy(),
            "view": col(parsed.view),
            "age": pd.array(col(parsed.age) if parsed.age is not None else [None] * n, dtype="Int64"),
            "sex": col(parsed.sex),
        }
    )
    if parsed.study is not None:
        df.insert(3, "study", col(parsed.study))
    findings = [f for f in ALL_FINDINGS if f in parsed.labels]
    uncertain_count = blank_count = 0
    for f in findings:
        v = np.asarray(parsed.labels[f], dtype=np.float32).copy()
        blank_count += apply_blank(v, blank)
        unc = v == -1
        uncertain_count += int(unc.sum())
        if uncertain != "keep":
            v[unc] = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[uncertain]
        df[f] = v
    for name, values in parsed.extra.items():
        df[name] = np.asarray(values, dtype=object)
    df["path"] = _resolve_paths(path, df["image"].to_numpy(), parsed.given_path, images_dir, require_images)
    df.attrs.update(
        format=parsed.fmt,
        dataset=layout,
        source=str(path),
        findings=findings,
        uncertain=uncertain,
        uncertain_labels=uncertain_count,
        blank=blank,
        blank_labels=blank_count,
        notes=list(parsed.notes),
        unmapped_terms=dict(parsed.unmapped),
    )
    return filter_views(df, views, str(path))


def index_images(images_dir: Path) -> tuple[dict[str, str], set[str]]:
    """One recursive scan: file name -> path, and the names found more than once.

    Symlinked folders are followed wherever they point (a folder of links to NIH's 12
    archive folders is the usual way to gather them: the user made those links), each
    real folder once, so a link loop or two links to one folder end the walk.
    """
    found: dict[str, str] = {}
    dups: set[str] = set()
    seen: set[str] = set()
    for root, dirs, files in os.walk(images_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
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
    """Files for the image ids: a ``path`` column, then paths under the root, then (plain names) a scan.

    The root is ``images_dir``; without it, path-like ids (CheXpert ``CheXpert-v1.0-small/...``,
    MIMIC ``files/...``) are looked for beside the CSV and one folder up. A path-like id also
    matches with its first folder dropped (``--images`` pointing inside ``CheXpert-v1.0-small``).
    Plain names are found by one recursive scan of ``images_dir`` (by name, else by stem: VinDr
    ids name ``ID.dicom`` / ``ID.png``).
    """
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
        roots = [root]
    else:
        roots = [csv_path.parent, csv_path.parent.parent]
    pathlike = [i for i, im in enumerate(images) if not out[i] and "/" in im]
    if pathlike:
        by_top: dict[tuple[Path, int, str], list[int]] = {}
        for i in pathlike:
            parts = images[i].split("/")
            for r in roots:
                for drop in (0, 1):
                    if len(parts) > drop + 1:
                        by_top.setdefault((r, drop, parts[drop]), []).append(i)
        for (r, drop, top), rows in by_top.items():
            if not (r / top).is_dir():
                continue  # one stat for the whole group
            for i in rows:
                if not out[i]:
                    cand = r.joinpath(*images[i].split("/")[drop:])
                    if cand.is_file():
                        out[i] = str(cand)
    if images_dir is not None:
        plain = [i for i, im in enumerate(images) if not out[i] and "/" not in im]
        if plain:
            index, dups = index_images(root)
            stems: dict[str, str] = {}
            stem_dups: set[str] = set()
            for name, full in index.items():
                stem = name.rsplit(".", 1)[0]
                if stem in stems:
                    stem_dups.add(stem)
                stems[stem] = full
            ambiguous = []
            for i in plain:
                name = images[i]
                if name in dups or (name not in index and name in stem_dups):
                    ambiguous.append(name)
                elif name in index:
                    out[i] = index[name]
                elif name in stems:
                    out[i] = stems[name]
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


def table_findings(df: pd.DataFrame) -> list[str]:
    """The findings a label table labels: ``attrs['findings']``, else its finding columns (ALL_FINDINGS order)."""
    named = df.attrs.get("findings")
    if named:
        return [f for f in ALL_FINDINGS if f in named and f in df.columns]
    return [f for f in ALL_FINDINGS if f in df.columns]


def _code_text(v: float) -> str:
    return "" if v != v else str(int(v))


def write_labels(df: pd.DataFrame, path: str | os.PathLike, absolute_paths: bool = False) -> Path:
    """Write a label table in the generic format (``.csv`` or ``.csv.gz``): finding cells 1 / 0 / -1 / blank.

    ``path`` is left out unless ``absolute_paths``: split files then stay valid
    when the images folder moves, and ``read_labels(..., images_dir)`` resolves them.
    """
    missing = [c for c in ("image", "patient") if c not in df.columns]
    findings = table_findings(df)
    if missing or not findings:
        what = ", ".join(missing) if missing else "finding columns"
        raise DataError(f"cannot write {path}: the table lacks {what}")
    meta = [c for c in META_COLUMNS if c != "path"]
    if "study" in df.columns:
        meta.insert(2, "study")
    out = pd.DataFrame({c: (df[c].to_numpy() if c in df.columns else "") for c in meta})
    for f in findings:
        out[f] = _map_unique(df[f].astype(float).to_numpy(), lambda t: _code_text(float(t)))
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
