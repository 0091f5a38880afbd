"""`cxrdx prepare`: decode every image once into a resized uint8 memory-mapped cache (layout: data/cache.py).

Decoding a 1024 px PNG costs ~10-20 ms of CPU; training reads each image every
epoch. Doing it once turns the loader into a memcpy out of the page cache, so a
couple of CPU cores keep a GPU busy.

With ``--allow-missing`` the images not found are left out of the plan before the
memmap is made, so ``images.npy`` holds only images that can be cached (no sparse
rows for a table of which a few files are present); every image left out, missing or
unreadable, is listed with its reason in ``not_cached.csv`` (``cache.json`` keeps the
count). ``index.csv``'s ``path`` is relative to the ``--images`` root (absolute without
``--images``, or for a file outside it); ``open_cache`` joins it back.

Resumable: progress (which rows are done) is saved every few seconds to
``CACHE/done.npy``, *after* the images written so far are flushed, so a killed run
never marks an unwritten row as done; rerunning the same command continues where
it stopped. index.csv and cache.json are written atomically once at the end, so a
cache is either complete and openable or reported as unfinished.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from csv import QUOTE_NONNUMERIC
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.data.cache import DONE_FILE, FORMAT_VERSION, IMAGES_FILE, INDEX_FILE, INFO_FILE, PLAN_FILE
from cxrdx.data.leakage import check_patient_overlap
from cxrdx.data.loaders import load_square
from cxrdx.data.origin import dataset_origin
from cxrdx.errors import DataError, ImageReadError
from cxrdx.files import atomic_write, atomic_write_text
from cxrdx.imaging.letterbox import MIN_IMAGE_SIZE
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.spreadsheet import safe_cell

SAVE_EVERY_S = 5.0  # how often progress is made durable while preparing (tests lower it: module attribute)

TODO, DONE, FAILED = 0, 1, 2
# every listed image that is not in the cache, and why (not found, unreadable)
NOT_CACHED_FILE = "not_cached.csv"
SHOWN_NAMES = 5  # names quoted in a message; the rest are in NOT_CACHED_FILE


def _decode_row(task: tuple[int, str, int]) -> tuple[int, np.ndarray | None, str | None]:
    """Worker: (row, path, size) -> (row, square or None, problem or None). Never raises for a bad file."""
    row, path, size = task
    if not path:
        return row, None, "file not found (check --images)"
    try:
        return row, load_square(path, size), None
    except ImageReadError as exc:
        return row, None, exc.problem
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # one odd file must not stop a 100k-image job; it is listed at the end
        return row, None, f"unexpected error while reading: {type(exc).__name__}: {exc}"


@dataclass
class PrepareResult:
    out: Path
    size: int
    cached: int  # rows in index.csv
    decoded: int  # rows decoded by this run (the rest were done by an earlier, interrupted run)
    failures: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    leakage: str | None = None  # the patient overlap between splits that --allow-patient-overlap let through


def _plan(
    labels: Sequence[str | os.PathLike],
    images: str | os.PathLike | None,
    mixed_no_finding: str = "error",
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """All rows to cache (the label tables, concatenated, with ``split`` from each CSV's stem),
    the findings they label (``in_vocabulary_order``) and the dataset each was read as."""
    from cxrdx.data.tables import read_label_table

    if not labels:
        raise DataError("no label CSV given; pass --labels train.csv [val.csv test.csv]")
    tables = []
    stems = [Path(p).name.split(".")[0] for p in labels]
    if len(set(stems)) != len(stems):
        raise DataError(
            f"--labels files must have different names (their stems become the split): {list(labels)}"
        )
    for csv, stem in zip(labels, stems, strict=True):
        if not Path(csv).is_file():
            raise DataError(f"{csv}: no such label file")
        # uncertain (-1) and "not mentioned" (-2) cells stay raw; open_cache applies the policies asked for
        table = read_label_table(
            csv, images_dir=images, mixed_no_finding=mixed_no_finding, uncertain="keep", blank="keep"
        )
        tables.append(table.with_frame(table.frame.assign(split=stem)))
    plan = pd.concat([t.frame for t in tables], ignore_index=True)
    from cxrdx.data.tables import table_findings
    from cxrdx.labels import in_vocabulary_order

    findings = in_vocabulary_order({f for t in tables for f in table_findings(t)})
    datasets = [t.dataset for t in tables]  # for the model card (data.origin)
    if plan.empty:
        raise DataError(f"the label file(s) {', '.join(map(str, labels))} list no images")
    if "path" not in plan.columns:
        plan["path"] = ""
    plan["path"] = plan["path"].fillna("").astype(str)
    plan["row"] = np.arange(len(plan), dtype=np.int64)
    return plan, findings, datasets


def _fingerprint(plan: pd.DataFrame, size: int) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION}:{size}:".encode())
    # image ids and splits, not paths: a resumed run may point --images at a moved folder
    for image, split in zip(plan["image"], plan["split"], strict=True):
        digest.update(f"{image}\0{split}\n".encode())
    return digest.hexdigest()


def _save_done(out: Path, done: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # np.save on a str path would append ".npy" to the temp name
            np.save(fh, done)

    atomic_write(out / DONE_FILE, write)


def _is_ours(path: Path) -> bool:
    """A file prepare writes, or one of its temporary files (left by a kill during a write)."""
    names = (IMAGES_FILE, DONE_FILE, PLAN_FILE, INDEX_FILE, INFO_FILE, NOT_CACHED_FILE)
    return path.name in names or (path.name.startswith(".") and path.name.endswith(".tmp"))


def _start_or_resume(
    out: Path, plan: pd.DataFrame, size: int, overwrite: bool, reporter: Reporter
) -> tuple[np.memmap, np.ndarray]:
    """Open the images memmap and the done markers: resumed when this is the same job, fresh otherwise."""
    fingerprint = _fingerprint(plan, size)
    state_path = out / PLAN_FILE
    if state_path.is_file() and (out / IMAGES_FILE).is_file() and (out / DONE_FILE).is_file():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
        if state.get("fingerprint") == fingerprint:
            try:
                images = np.load(out / IMAGES_FILE, mmap_mode="r+")
                done = np.load(out / DONE_FILE)
                if images.shape == (len(plan), size, size) and done.shape == (len(plan),):
                    return images, done.astype(np.uint8)
            except (OSError, ValueError):
                pass
            reporter.note(f"the unfinished cache in {out} is damaged; starting it again")
        elif not overwrite:
            raise DataError(
                f"{out} already holds a cache of other images or another size; "
                "choose a new --out or pass --overwrite to replace it"
            )
    elif (out / INFO_FILE).exists() and not overwrite:
        raise DataError(f"{out} already holds a cache; choose a new --out or pass --overwrite to replace it")
    elif out.exists() and not all(_is_ours(p) for p in out.iterdir()) and not overwrite:
        raise DataError(f"{out} is not empty and is not a cxrdx cache; choose a new or empty --out")
    if out.exists():
        for p in out.iterdir():
            if _is_ours(p) and p.is_file():  # never delete anything prepare did not write
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{IMAGES_FILE}.tmp"
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(plan), size, size))
    del mm
    os.replace(tmp, out / IMAGES_FILE)
    done = np.zeros(len(plan), dtype=np.uint8)
    _save_done(out, done)
    atomic_write_text(state_path, json.dumps({"fingerprint": fingerprint, "size": size, "rows": len(plan)}))
    return np.load(out / IMAGES_FILE, mmap_mode="r+"), done


def _write_not_cached(out: Path, rows: list[dict]) -> Path:
    path = out / NOT_CACHED_FILE
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=["image", "path", "split", "problem"]).map(safe_cell)  # no formulas
    atomic_write_text(path, table.to_csv(index=False, quoting=QUOTE_NONNUMERIC))
    return path


def _check_missing(
    plan: pd.DataFrame, out: Path, images: str | os.PathLike | None, allow_missing: bool
) -> None:
    """Stop before decoding when listed images are not on disk (unless allowed; never when all are)."""
    missing = plan.index[plan["path"] == ""]
    if len(missing) == 0 or (allow_missing and len(missing) < len(plan)):
        return
    rows = [
        {
            "image": str(plan.at[r, "image"]),
            "path": "",
            "split": str(plan.at[r, "split"]),
            "problem": "file not found",
        }
        for r in missing
    ]
    listed = _write_not_cached(out, rows)
    names = ", ".join(r["image"] for r in rows[:SHOWN_NAMES])
    more = f" and {len(rows) - SHOWN_NAMES} more" if len(rows) > SHOWN_NAMES else ""
    where = f"--images {images}" if images else "the folder of the label CSV"
    found = len(plan) - len(missing)
    if found == 0:
        advice = "nothing was cached; check --images (it must be the folder holding the image files)"
    else:
        advice = (
            f"nothing was cached; download the missing images into it, or pass --allow-missing "
            f"to cache the {found} that are there"
        )
    raise DataError(
        f"{len(missing)} of the {len(plan)} images listed are not in {where}: {names}{more} "
        f"(all listed in {listed}); {advice}"
    )


def _drop_missing(plan: pd.DataFrame) -> list[dict]:
    """The rows whose file was not found (allowed by --allow-missing), as not_cached.csv rows."""
    absent = plan.index[plan["path"] == ""]
    return [
        {
            "image": str(plan.at[r, "image"]),
            "path": "",
            "split": str(plan.at[r, "split"]),
            "problem": "file not found",
        }
        for r in absent
    ]


def _relative_paths(paths: pd.Series, images: str | os.PathLike | None) -> tuple[pd.Series, str]:
    """index.csv's ``path``: relative to the --images root (posix), else absolute; and which it is."""
    if images is None:
        return paths.map(lambda p: str(Path(p).resolve()) if p else ""), "absolute"

    def rel(p: str) -> str:
        if not p:
            return ""
        r = os.path.relpath(p, images)
        return str(Path(p).resolve()) if r == ".." or r.startswith(".." + os.sep) else Path(r).as_posix()

    return paths.map(rel), "relative to images_dir"


def prepare_cache(
    labels: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    size: int = 320,
    images: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    mixed_no_finding: str = "error",
    allow_missing: bool = False,
    allow_patient_overlap: bool = False,
    reporter: Reporter | None = None,
) -> PrepareResult:
    """Decode, letterbox and store every image listed in ``labels`` (resumable; see module doc).

    ``mixed_no_finding`` is passed to ``read_labels`` (``"keep"``: accept ``No Finding|Effusion``).
    Images listed but not found under ``images`` stop the job before any decoding (a DataError with
    a count, the first names and ``OUT/not_cached.csv`` listing all) unless ``allow_missing``; when
    no image at all can be cached, no cache files are left behind.
    """
    if size < MIN_IMAGE_SIZE:
        raise DataError(f"--size {size} is too small for DenseNet121; use at least {MIN_IMAGE_SIZE}")
    if images is not None and not Path(images).is_dir():
        raise DataError(f"--images {images}: no such folder")
    start = time.monotonic()
    out = Path(out)
    plan, findings, datasets = _plan(labels, images, mixed_no_finding)
    leakage = check_patient_overlap(
        {str(s): t for s, t in plan.groupby("split", sort=False)},
        allow=allow_patient_overlap,
        source=", ".join(map(str, labels)),
    )
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a folder")
    _check_missing(plan, out, images, allow_missing)
    missing = _drop_missing(plan)  # with --allow-missing: the cache holds only what it can cache
    if missing:
        plan = plan.loc[plan["path"] != ""].reset_index(drop=True)
        plan["row"] = np.arange(len(plan), dtype=np.int64)
    try:  # an unwritable or impossible --out fails here, before any decoding
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
        cache, done = _start_or_resume(out, plan, size, overwrite, reporter_or_default(reporter, "prepare"))
    except OSError as exc:
        raise DataError(
            f"--out {out} cannot be written ({exc.strerror or exc}): is the disk full or the folder "
            "read-only? Choose another folder or free some space"
        ) from None
    todo = np.flatnonzero(done != DONE)
    paths = plan["path"].tolist()
    tasks = [(int(r), paths[r], size) for r in todo]
    failures: dict[int, str] = {}
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(0, int(workers))
    from tqdm import tqdm

    bar = tqdm(
        total=len(plan),
        initial=len(plan) - len(todo),
        desc="prepare",
        unit="img",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    last_save = time.monotonic()

    def handle(result: tuple[int, np.ndarray | None, str | None]) -> None:
        nonlocal last_save
        row, square, problem = result
        if square is None:
            failures[row] = problem or "unreadable"
            done[row] = FAILED
        else:
            cache[row] = square
            done[row] = DONE
        bar.update(1)
        if time.monotonic() - last_save > SAVE_EVERY_S:
            cache.flush()  # images first: a row is marked done only once its pixels are on disk
            _save_done(out, done)
            last_save = time.monotonic()

    try:
        if workers <= 1 or len(tasks) < 2:
            for task in tasks:
                handle(_decode_row(task))
        else:
            import multiprocessing

            # spawn: the parent may hold torch/OpenMP threads, which fork does not survive.
            ctx = multiprocessing.get_context("spawn")
            chunk = max(1, min(32, len(tasks) // (workers * 8)))
            with ctx.Pool(workers) as pool:
                for result in pool.imap_unordered(_decode_row, tasks, chunksize=chunk):
                    handle(result)
    finally:
        bar.close()
        cache.flush()
        _save_done(out, done)

    ok = done == DONE
    index = plan.loc[ok].reset_index(drop=True)
    counts = {str(k): int(v) for k, v in index["split"].value_counts(sort=False).items()}
    failure_list = missing + [
        {"image": str(plan.at[r, "image"]), "path": paths[r], "split": str(plan.at[r, "split"]), "problem": p}
        for r, p in sorted(failures.items())
    ]
    if failure_list:
        _write_not_cached(out, failure_list)
    else:
        (out / NOT_CACHED_FILE).unlink(missing_ok=True)  # a list left by an earlier, refused run
    if not ok.any():
        for name in (IMAGES_FILE, DONE_FILE, PLAN_FILE):  # nothing to train on: no cache left behind
            (out / name).unlink(missing_ok=True)
        shown = "; ".join(f"{f['image']}: {f['problem']}" for f in failure_list[:SHOWN_NAMES])
        raise DataError(
            f"none of the {len(plan) + len(missing)} images could be read, so nothing was cached (e.g. {shown}); "
            f"all are listed in {out / NOT_CACHED_FILE}"
        )
    index["path"], path_base = _relative_paths(index["path"], images)
    columns = [c for c in index.columns if c != "path"] + ["path"]
    atomic_write_text(out / INDEX_FILE, index[columns].to_csv(index=False))
    info = {
        "format_version": FORMAT_VERSION,
        "size": size,
        "resize": "letterbox",
        "pixels": "uint8 = round(255 * letterboxed read_image in [0, 1]), padding 0",
        "rows": len(plan) + len(missing),  # listed in the label tables
        "cached": int(ok.sum()),
        "counts": counts,
        "not_cached": len(failure_list),  # each with its reason in not_cached.csv
        "not_cached_file": NOT_CACHED_FILE if failure_list else None,
        "paths": path_base,  # index.csv's path column
        "label_cells": "1 positive, 0 negative, -1 uncertain, -2 not mentioned (CheXpert/MIMIC blank), "
        "blank unlabelled; open_cache applies --uncertain and --blank",
        "sources": [str(Path(p).resolve()) for p in labels],
        "images_dir": str(Path(images).resolve()) if images else None,
        "findings": list(findings),  # what the cache labels (data/cache.py)
        "origin": dataset_origin(labels, images, datasets).to_json(),
        "patient_overlap": leakage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(out / INFO_FILE, json.dumps(info, indent=2))
    return PrepareResult(
        out=out,
        size=size,
        cached=int(ok.sum()),
        decoded=len(tasks) + len(missing),  # the missing ones were looked for by this run
        failures=failure_list,
        counts=counts,
        seconds=time.monotonic() - start,
        leakage=leakage,
    )
