"""`cxrdx prepare`: decode every image once into a resized uint8 memory-mapped cache.

Decoding a 1024 px PNG costs ~10-20 ms of CPU; training reads each image every
epoch. Doing it once turns the loader into a memcpy out of the page cache, so a
couple of CPU cores keep a GPU busy. Layout (docs/architecture.md):

- ``CACHE/images.npy``: (N, S, S) uint8, ``round(255 * letterbox(read_image(path), S))``.
  Resize is *letterbox* (scale the longer side, pad with black): a centre crop would
  cut off apices and costophrenic angles, where effusions and pneumothoraces show.
- ``CACHE/index.csv``: the label table of the images that were read, plus ``row``
  (into images.npy) and ``split`` (the stem of the CSV each row came from).
- ``CACHE/cache.json``: size, resize mode, counts per split, and the unreadable
  images with the reason each failed (they are left out of index.csv).

Resumable: progress (which rows are done) is saved every few seconds to
``CACHE/done.npy``, *after* the images written so far are flushed, so a killed run
never marks an unwritten row as done; rerunning the same command continues where
it stopped. index.csv and cache.json are written atomically once at the end, so a
cache is either complete and openable or reported as unfinished.

The training loader is here too (torch-free, so `prepare` workers stay light):
``CacheBatches`` hands out whole batches of uint8 squares with one fancy index into
the memmap; flips and normalisation happen afterwards on the batch tensor, on the
GPU when there is one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdx.errors import DataError, ImageReadError
from cxrdx.labels import FINDINGS
from cxrdx.preprocess import MIN_IMAGE_SIZE, letterbox

FORMAT_VERSION = 1
IMAGES_FILE = "images.npy"
INDEX_FILE = "index.csv"
INFO_FILE = "cache.json"
DONE_FILE = "done.npy"
PLAN_FILE = ".prepare.json"
SAVE_EVERY_S = 5.0  # how often progress is made durable while preparing

TODO, DONE, FAILED = 0, 1, 2


# --------------------------------------------------------------------------- decoding


def to_square_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """A [0, 1] gray image -> (size, size) uint8 letterboxed square, as stored in the cache."""
    square, _ = letterbox(image, size)
    return np.clip(np.rint(square * 255.0), 0, 255).astype(np.uint8)


def load_square(path: str, size: int) -> np.ndarray:
    """Decode one file with cxrdx.io.read_image and letterbox it (raises ImageReadError)."""
    from cxrdx.io import read_image

    image, _ = read_image(path)
    return to_square_uint8(image, size)


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


# --------------------------------------------------------------------------- prepare


@dataclass
class PrepareResult:
    out: Path
    size: int
    cached: int  # rows in index.csv
    decoded: int  # rows decoded by this run (the rest were done by an earlier, interrupted run)
    failures: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _plan(labels: Sequence[str | os.PathLike], images: str | os.PathLike | None) -> pd.DataFrame:
    """All rows to cache: the label tables, concatenated, with ``split`` from each CSV's stem."""
    from cxrdx.datasets import read_labels

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
        table = read_labels(csv, images_dir=images)
        table = table.copy()
        table["split"] = stem
        tables.append(table)
    plan = pd.concat(tables, ignore_index=True)
    if plan.empty:
        raise DataError(f"the label file(s) {', '.join(map(str, labels))} list no images")
    if "path" not in plan.columns:
        plan["path"] = ""
    plan["path"] = plan["path"].fillna("").astype(str)
    plan["row"] = np.arange(len(plan), dtype=np.int64)
    return plan


def _fingerprint(plan: pd.DataFrame, size: int) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION}:{size}:".encode())
    # image ids and splits, not paths: a resumed run may point --images at a moved folder
    for image, split in zip(plan["image"], plan["split"], strict=True):
        digest.update(f"{image}\0{split}\n".encode())
    return digest.hexdigest()


def _atomic_text(path: Path, text: str) -> None:
    from cxrdx.model import atomic_write

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(path, write)


def _save_done(out: Path, done: np.ndarray) -> None:
    from cxrdx.model import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # np.save on a str path would append ".npy" to the temp name
            np.save(fh, done)

    atomic_write(out / DONE_FILE, write)


def _is_ours(path: Path) -> bool:
    """A file prepare writes, or one of its temporary files (left by a kill during a write)."""
    names = (IMAGES_FILE, DONE_FILE, PLAN_FILE, INDEX_FILE, INFO_FILE)
    return path.name in names or (path.name.startswith(".") and path.name.endswith(".tmp"))


def _start_or_resume(
    out: Path, plan: pd.DataFrame, size: int, overwrite: bool
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
            print(
                f"cxrdx prepare: the unfinished cache in {out} is damaged; starting it again", file=sys.stderr
            )
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
    _atomic_text(state_path, json.dumps({"fingerprint": fingerprint, "size": size, "rows": len(plan)}))
    return np.load(out / IMAGES_FILE, mmap_mode="r+"), done


def prepare_cache(
    labels: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    size: int = 320,
    images: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> PrepareResult:
    """Decode, letterbox and store every image listed in ``labels`` (resumable; see module doc)."""
    if size < MIN_IMAGE_SIZE:
        raise DataError(f"--size {size} is too small for DenseNet121; use at least {MIN_IMAGE_SIZE}")
    if images is not None and not Path(images).is_dir():
        raise DataError(f"--images {images}: no such folder")
    start = time.monotonic()
    out = Path(out)
    plan = _plan(labels, images)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a folder")
    try:  # an unwritable or impossible --out fails here, before any decoding
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
        cache, done = _start_or_resume(out, plan, size, overwrite)
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
    failure_list = [
        {"image": str(plan.at[r, "image"]), "path": paths[r], "split": str(plan.at[r, "split"]), "problem": p}
        for r, p in sorted(failures.items())
    ]
    columns = [c for c in index.columns if c != "path"] + ["path"]
    _atomic_text(out / INDEX_FILE, index[columns].to_csv(index=False))
    info = {
        "format_version": FORMAT_VERSION,
        "size": size,
        "resize": "letterbox",
        "pixels": "uint8 = round(255 * letterboxed read_image in [0, 1]), padding 0",
        "rows": len(plan),
        "cached": int(ok.sum()),
        "counts": counts,
        "failures": failure_list,
        "sources": [str(Path(p).resolve()) for p in labels],
        "images_dir": str(Path(images).resolve()) if images else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_text(out / INFO_FILE, json.dumps(info, indent=2))
    return PrepareResult(
        out=out,
        size=size,
        cached=int(ok.sum()),
        decoded=len(tasks),
        failures=failure_list,
        counts=counts,
        seconds=time.monotonic() - start,
    )


# --------------------------------------------------------------------------- reading a cache


@dataclass
class PreparedCache:
    """An opened cache: ``images`` is the whole (N, S, S) memmap; ``index`` may be a subset of its rows."""

    path: Path
    images: np.ndarray
    index: pd.DataFrame
    size: int
    info: dict

    @property
    def splits(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.index["split"].value_counts(sort=False).items()}

    def subset(self, split: str) -> PreparedCache:
        """The rows of one split (same memmap)."""
        if split not in set(self.index["split"]):
            counts = ", ".join(f"{k}: {v}" for k, v in self.splits.items()) or "none"
            raise DataError(
                f"{self.path}: the cache has no images in split {split!r} (splits: {counts}); "
                f"prepare it with --labels including {split}.csv"
            )
        return PreparedCache(
            self.path,
            self.images,
            self.index[self.index["split"] == split].reset_index(drop=True),
            self.size,
            self.info,
        )

    @property
    def labels(self) -> np.ndarray:
        """(n, 14) uint8 labels in FINDINGS order."""
        return self.index[list(FINDINGS)].to_numpy(dtype=np.uint8)

    @property
    def rows(self) -> np.ndarray:
        return self.index["row"].to_numpy(dtype=np.int64)

    def squares(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (B, S, S) for the given positions in ``index``."""
        return _gather(self.images, self.rows[np.asarray(positions, dtype=np.int64)])

    def batches(self) -> CacheBatches:
        return CacheBatches(self.path / IMAGES_FILE, self.rows, self.labels)


def open_cache(path: str | os.PathLike) -> PreparedCache:
    """Open a finished cache, or raise DataError saying what is wrong and to run `cxrdx prepare`."""
    path = Path(path)
    hint = f"create it with `cxrdx prepare --labels train.csv val.csv --images DIR --out {path}`"
    if not path.is_dir():
        raise DataError(f"{path}: no such cache folder; {hint}")
    if not (path / INFO_FILE).is_file():
        if (path / PLAN_FILE).is_file():
            raise DataError(
                f"{path}: this cache is unfinished (prepare was interrupted); rerun the same `cxrdx prepare` to finish it"
            )
        raise DataError(f"{path}: not a cxrdx cache (no {INFO_FILE}); {hint}")
    try:
        info = json.loads((path / INFO_FILE).read_text())
        size = int(info["size"])
        index = pd.read_csv(
            path / INDEX_FILE, dtype={"image": str, "patient": str, "split": str, "path": str}
        )
        images = np.load(path / IMAGES_FILE, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, pd.errors.ParserError) as exc:
        raise DataError(
            f"{path}: the cache is corrupt or incomplete ({exc}); rebuild it: {hint} --overwrite"
        ) from None
    missing = [c for c in ("row", "split", *FINDINGS) if c not in index.columns]
    if missing:
        raise DataError(
            f"{path}/{INDEX_FILE}: missing columns {missing}; rebuild the cache: {hint} --overwrite"
        )
    if images.ndim != 3 or images.shape[1:] != (size, size) or images.dtype != np.uint8:
        raise DataError(
            f"{path}/{IMAGES_FILE}: shape {images.shape} {images.dtype} does not match size {size} in {INFO_FILE}; "
            f"rebuild the cache: {hint} --overwrite"
        )
    if len(index) and (index["row"].min() < 0 or index["row"].max() >= images.shape[0]):
        raise DataError(
            f"{path}/{INDEX_FILE}: rows point outside {IMAGES_FILE}; rebuild the cache with --overwrite"
        )
    for name in FINDINGS:
        index[name] = index[name].fillna(0).astype(np.uint8)
    index["split"] = index["split"].astype(str)
    return PreparedCache(path=path, images=images, index=index, size=size, info=info)


# --------------------------------------------------------------------------- batch sources for training


def _gather(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """images[rows] read in ascending row order (sequential on disk), returned in the asked order."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *images.shape[1:]), dtype=np.uint8)
    out[order] = images[rows[order]]
    return out


class CacheBatches:
    """Map-style source for a DataLoader with a BatchSampler: ``source[list_of_positions]`` -> one batch.

    Returns (uint8 (B, S, S), float32 (B, 14)). Whole-batch indexing costs one
    memmap gather per batch instead of one Python call per image. The memmap is
    opened lazily in each worker (a memmap does not pickle well).
    """

    def __init__(self, images_path: str | os.PathLike, rows: np.ndarray, labels: np.ndarray) -> None:
        self.images_path = str(images_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.float32)
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def squares(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return _gather(self._images, self.rows[np.asarray(positions, dtype=np.int64)])

    def __getitem__(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        return self.squares(positions), self.labels[positions]


class FileBatches:
    """Same interface as CacheBatches, decoding image files on the fly (no cache; slower)."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, size: int) -> None:
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.float32)
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.paths)

    def squares(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), self.size, self.size), dtype=np.uint8)
        for i, pos in enumerate(np.asarray(positions, dtype=np.int64)):
            path = self.paths[pos]
            try:
                out[i] = load_square(path, self.size)
            except ImageReadError as exc:
                raise DataError(
                    f"{exc}; training from CSV decodes on the fly and stops at an unreadable image: "
                    "run `cxrdx prepare` (it lists and skips them) and train from the cache"
                ) from None
        return out

    def __getitem__(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        return self.squares(positions), self.labels[positions]


def pixel_stats(
    source: CacheBatches | FileBatches, max_images: int = 2000, batch: int = 64
) -> tuple[float, float]:
    """Mean and std of [0, 1] pixels over up to ``max_images`` evenly spaced images (deterministic)."""
    n = len(source)
    if n == 0:
        raise DataError("cannot compute normalisation statistics from an empty training split")
    positions = np.unique(np.linspace(0, n - 1, num=min(n, max_images)).round().astype(np.int64))
    total = total_sq = count = 0.0
    for start in range(0, len(positions), batch):
        x = source.squares(positions[start : start + batch]).astype(np.float64) / 255.0
        total += float(x.sum())
        total_sq += float(np.square(x).sum())
        count += x.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    return float(mean), max(std, 1e-3)


# --------------------------------------------------------------------------- CLI


def _run_prepare(args: argparse.Namespace) -> int:
    result = prepare_cache(
        labels=args.labels,
        out=args.out,
        size=args.size,
        images=args.images,
        workers=args.workers,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    reused = ""
    total = result.cached + len(result.failures)
    if result.decoded < total:
        reused = f" ({total - result.decoded} already done by an earlier run)"
    counts = ", ".join(f"{k}: {v}" for k, v in result.counts.items())
    if result.failures:
        print(
            f"{len(result.failures)} image(s) could not be read and were left out (also listed in "
            f"{result.out / INFO_FILE}):",
            file=sys.stderr,
        )
        for f in result.failures:
            print(f"  {f['path'] or f['image']}: {f['problem']}", file=sys.stderr)
    if result.cached == 0:
        print(
            f"cxrdx prepare: error: none of the {total} images could be read; nothing was cached",
            file=sys.stderr,
        )
        return 1
    print(
        f"cached {result.cached} images ({counts}) at {result.size} px, letterboxed, into {result.out}"
        f"{reused} in {result.seconds:.1f} s"
    )
    print(f"next: cxrdx train --data {result.out} --out runs/RUN")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="decode and resize images once into a memory-mapped cache for training",
        description="Decode every image listed in the label CSV(s) once, letterbox it to SIZE x SIZE "
        "(scale the longer side, pad with black, so no anatomy is cropped), and store uint8 pixels in "
        "OUT/images.npy with OUT/index.csv (labels + row + split = CSV stem) and OUT/cache.json. "
        "Interrupted? Rerun the same command: finished images are kept. Unreadable images are "
        "reported, skipped and listed at the end.",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        required=True,
        metavar="CSV",
        help="label table(s), e.g. the train.csv val.csv test.csv written by `cxrdx split`",
    )
    p.add_argument("--images", metavar="DIR", help="folder the image names in the CSVs are relative to")
    p.add_argument("--size", type=int, default=320, help="square side in pixels (default 320)")
    p.add_argument("--out", required=True, metavar="CACHE", help="cache folder to create (or resume)")
    p.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: CPU count, at most 8)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_prepare)


__all__ = [
    "CacheBatches",
    "FileBatches",
    "PrepareResult",
    "PreparedCache",
    "load_square",
    "open_cache",
    "pixel_stats",
    "prepare_cache",
    "to_square_uint8",
]
