"""The rows to evaluate (a prepared cache split or a label CSV with images on disk) and inference over them."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrdx.data.cache import INDEX_FILE, is_cache, open_cache
from cxrdx.errors import CxrdxError, DataError

if TYPE_CHECKING:
    import pandas as pd

    from cxrdx.inference.predictor import Predictor


@dataclass
class EvalSet:
    """Rows to evaluate: a label table and a way to get their [0, 1] squares."""

    description: str
    table: pd.DataFrame  # image, patient, finding columns
    cache_images: np.ndarray | None = None  # (N, S, S) uint8 memmap; table["row"] indexes it
    images_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def load_eval_set(path: str, split: str | None, images: str | None, labels: Sequence[str]) -> EvalSet:
    """A prepared cache directory (rows of ``split``) or a label CSV whose images are read from disk."""
    p = Path(path)
    if is_cache(p):
        cache = open_cache(p)  # says why an unfinished or damaged cache cannot be used
        table = cache.index
        if split:
            present = sorted(set(table["split"]))
            table = table[table["split"] == split].reset_index(drop=True)
            if table.empty:
                raise DataError(f"{p}: no rows with split {split!r}; the cache holds splits {present}")
        desc = f"{p} (split {split})" if split else str(p)
        return _finish_table(EvalSet(desc, table, cache_images=cache.images), labels)
    if p.is_dir():
        raise DataError(
            f"{p}: a folder without {INDEX_FILE} and images.npy is not a prepared cache; run `cxrdx prepare`"
        )
    if not p.is_file():
        raise DataError(f"{p}: no such label CSV or prepared cache folder")
    from cxrdx.data.tables import read_labels

    table = read_labels(p, images)
    images_dir = Path(images) if images else None
    return _finish_table(EvalSet(str(p), table, images_dir=images_dir), labels)


def _finish_table(es: EvalSet, labels: Sequence[str]) -> EvalSet:
    table = es.table
    missing = [name for name in labels if name not in table.columns]
    if missing:
        raise DataError(
            f"{es.description}: no label column(s) for {', '.join(missing)}, which the model outputs"
        )
    if "image" not in table.columns:
        raise DataError(f"{es.description}: no 'image' column")
    if "patient" in table.columns:
        table = table.assign(patient=table["patient"].fillna(""))
    if "patient" not in table.columns or (table["patient"].astype(str).str.strip() == "").any():
        es.notes.append(
            f"{es.description}: some rows have no patient id; each such image counts as its own patient "
            "in the bootstrap (CIs may be too narrow if patients have several images)"
        )
        pat = table["patient"].astype(str) if "patient" in table.columns else table["image"].astype(str)
        table = table.assign(
            patient=np.where(pat.str.strip() == "", "image:" + table["image"].astype(str), pat)
        )
    es.table = table.reset_index(drop=True)
    return es


def _iter_squares(es: EvalSet, size: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions into es.table, float32 (B, S, S) letterboxed [0, 1] squares); unreadable rows omitted."""
    from cxrdx.imaging.letterbox import letterbox

    n = len(es.table)
    if es.cache_images is not None:
        rows = es.table["row"].to_numpy()
        for start in range(0, n, batch_size):
            pos = np.arange(start, min(n, start + batch_size))
            yield pos, np.asarray(es.cache_images[rows[pos]], dtype=np.float32) / 255.0
        return
    from cxrdx.imaging.read import read_image

    paths = es.table["path"].astype(str) if "path" in es.table.columns else es.table["image"].astype(str)
    pending_pos: list[int] = []
    pending: list[np.ndarray] = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        if not raw or (es.images_dir is not None and not path.is_absolute() and not path.exists()):
            path = (es.images_dir or Path(".")) / str(es.table["image"].iloc[i])
        try:
            image, _ = read_image(path)
        except CxrdxError as exc:
            es.notes.append(f"skipped unreadable image: {exc}")
            continue
        pending_pos.append(i)
        pending.append(letterbox(image, size)[0])
        if len(pending) >= batch_size:
            yield np.asarray(pending_pos), np.stack(pending)
            pending_pos, pending = [], []
    if pending:
        yield np.asarray(pending_pos), np.stack(pending)


def _inputs_for(predictor: Predictor, squares: np.ndarray) -> np.ndarray:
    """Squares resized to this predictor's size, then THE normalisation (``Preprocessing.to_input``)."""
    from cxrdx.imaging.letterbox import resize_float

    size = predictor.meta.preprocessing.size
    if squares.shape[1] != size:
        squares = np.stack([resize_float(sq, size, size) for sq in squares])
    return predictor.meta.preprocessing.to_input(squares)


def run_inference(
    predictors: Sequence[Predictor], es: EvalSet, tta: bool, batch_size: int = 32, progress: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Probabilities (n_ok, L), spread (n_ok, L) or None, and the table positions they belong to.

    Spread: one checkpoint -> standard deviation over the TTA views (needs ``tta``);
    an ensemble -> standard deviation across the checkpoints (each TTA-averaged if ``tta``).
    """
    from tqdm import tqdm

    size = predictors[0].meta.preprocessing.size
    probs_all, spread_all, pos_all = [], [], []
    bar = tqdm(total=len(es.table), desc="evaluate", unit="img", disable=not progress, file=sys.stderr)
    for pos, squares in _iter_squares(es, size, batch_size):
        outs = [p.probabilities(_inputs_for(p, squares), tta=tta) for p in predictors]
        if len(outs) == 1:
            probs_all.append(outs[0][0])
            spread_all.append(outs[0][1])
        else:
            stack = np.stack([o[0] for o in outs])
            probs_all.append(stack.mean(0))
            spread_all.append(stack.std(0))
        pos_all.append(pos)
        bar.update(len(pos))
    bar.close()
    if not pos_all:
        raise DataError(f"{es.description}: none of the {len(es.table)} images could be read")
    spread = None if spread_all[0] is None else np.concatenate(spread_all)
    return np.concatenate(probs_all), spread, np.concatenate(pos_all)
