"""The project's label table: reading any supported source into it, resolving image paths, writing it.

Every table that enters the project (NIH's ``Data_Entry_2017*.csv``, a phantom
``Data_Entry.csv``, CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR, NIH's Google
re-labels, a hospital's own CSV, our split files) is read by ``read_label_table`` into one
*label table* (a ``LabelTable``: the rows and what the reading learned; ``read_labels`` gives
the rows alone): ``image``, ``path``, ``patient``, ``view``, ``age``, ``sex`` (and ``study``
where the dataset records studies) and one float32 column per finding the dataset labels
(``LabelTable.findings``, in ``labels.ALL_FINDINGS`` order): 1 positive, 0 negative, NaN unlabelled. Uncertain
labels (-1) follow the ``uncertain`` policy of the CheXpert paper (``ignore`` -> NaN,
``zeros``, ``ones``; ``keep`` leaves -1 for counting and caching). CheXpert and MIMIC-CXR
cells the labeler left blank on a row that is not the publisher's No Finding ("not mentioned")
follow the ``blank`` policy (``negative``, the default and the CheXpert paper's baselines, or
``unlabelled``; ``keep`` leaves ``generic.NOT_MENTIONED`` for counting and caching); the
README says what each does to the numbers. NIH tables label all 14. One module per source
decodes the cells and registers its reader (``readers.py``: ``nih``, ``generic``, ``chexpert``,
``mimic``, ``padchest``, ``vindr``, ``google``); this module imports them, asks the registry
which reads a header (or takes ``dataset=``) and does what every source shares.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data import chexpert, generic, google, mimic, nih, padchest, vindr  # noqa: F401 (each registers its reader)
from cxrdx.data.columns import Parsed, _few, _map_unique, _read_csv
from cxrdx.data.generic import BLANK_POLICIES, DEFAULT_BLANK, apply_blank, check_blank  # noqa: F401 (re-exported)
from cxrdx.data.label_table import LabelTable
from cxrdx.data.readers import READERS, ReadOptions, detect_layout  # noqa: F401 (detect_layout re-exported)
from cxrdx.data.views import select_views
from cxrdx.errors import ConfigError, DataError
from cxrdx.labels import ALL_FINDINGS, FINDINGS
from cxrdx.settings import DATASETS

META_COLUMNS = ("image", "path", "patient", "view", "age", "sex")  # + "study" where the dataset has studies
LABEL_COLUMNS = (*META_COLUMNS, *FINDINGS)
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones", "keep")


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


def read_label_table(
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
) -> LabelTable:
    """Read any supported label table into a ``LabelTable``: the project's label table and its reading.

    The layout is detected from the header by the registered readers (``readers.py``), or
    forced with ``dataset`` (one of ``DATASETS``). ``.csv.gz`` works. With ``images_dir`` each
    image is resolved to ``path`` (a path relative to that folder, else one recursive scan by
    file name); ``require_images=True`` makes a missing file an error. ``views`` filters rows
    (``"frontal"``, ``"all"``/None, or ``"PA,AP"``; see ``views.py``). ``vindr_rule``:
    ``any`` or ``majority`` reader. A ``Finding Labels`` cell mixing ``No Finding``
    with findings is a ``LabelError`` unless ``mixed_no_finding="keep"``. ``blank``: what a
    CheXpert / MIMIC-CXR "not mentioned" cell means (``BLANK_POLICIES``; module doc).
    """
    path = Path(csv_path)
    if uncertain not in UNCERTAIN_POLICIES:
        raise ConfigError(f"--uncertain {uncertain!r}: choose one of {', '.join(UNCERTAIN_POLICIES[:3])}")
    check_blank(blank)
    if dataset is not None and dataset not in READERS:
        raise ConfigError(f"--dataset {dataset!r} is unknown; choose one of {', '.join(DATASETS)}")
    raw = _read_csv(path, "label table")
    if raw.empty:
        raise DataError(f"label table {path} has a header but no rows")
    layout = dataset or detect_layout(path, [str(c) for c in raw.columns], DATASETS)
    options = ReadOptions(mixed_no_finding=mixed_no_finding, vindr_rule=vindr_rule)
    parsed = READERS[layout].read(path, raw, options)
    table = _finish(path, parsed, images_dir, require_images, (uncertain, blank), layout)
    frame, selection = select_views(table.frame, views, str(path))
    return replace(table, frame=frame, views=selection)


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
    """The rows of ``read_label_table`` (same arguments): a pandas DataFrame, one row per image.

    What the reading learned (dataset, findings labelled, notes, views dropped, ...) is on the
    ``LabelTable`` that ``read_label_table`` returns; this DataFrame carries no metadata.
    """
    return read_label_table(
        csv_path,
        images_dir,
        require_images,
        mixed_no_finding=mixed_no_finding,
        dataset=dataset,
        uncertain=uncertain,
        views=views,
        vindr_rule=vindr_rule,
        blank=blank,
    ).frame


def _finish(path, parsed: Parsed, images_dir, require_images, policies, layout) -> LabelTable:
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
    return LabelTable(
        frame=df,
        dataset=layout,
        format=parsed.fmt,
        source=str(path),
        findings=tuple(findings),
        uncertain=uncertain,
        uncertain_labels=uncertain_count,
        blank=blank,
        blank_labels=blank_count,
        notes=tuple(parsed.notes),
        unmapped_terms=dict(parsed.unmapped),
    )


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


def table_findings(table: LabelTable | pd.DataFrame) -> list[str]:
    """The findings a label table labels: a ``LabelTable``'s ``findings``, else a frame's finding columns.

    In ``ALL_FINDINGS`` order, and only those with a column.
    """
    if isinstance(table, LabelTable):
        return [f for f in ALL_FINDINGS if f in table.findings and f in table.frame.columns]
    return [f for f in ALL_FINDINGS if f in table.columns]


def _code_text(v: float) -> str:
    return "" if v != v else str(int(v))


def write_labels(
    table: LabelTable | pd.DataFrame, path: str | os.PathLike, absolute_paths: bool = False
) -> Path:
    """Write a label table in the generic format (``.csv`` or ``.csv.gz``): finding cells 1 / 0 / -1 / blank.

    A ``LabelTable`` writes the findings it labels; a bare DataFrame its finding columns.

    ``path`` is left out unless ``absolute_paths``: split files then stay valid
    when the images folder moves, and ``read_labels(..., images_dir)`` resolves them.
    """
    df = table.frame if isinstance(table, LabelTable) else table
    missing = [c for c in ("image", "patient") if c not in df.columns]
    findings = table_findings(table)
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
