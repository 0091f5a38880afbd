"""The rows to evaluate (a prepared cache split or a label CSV with images on disk) and inference over them."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrdx.data.cache import INDEX_FILE, is_cache, open_cache
from cxrdx.data.origin import Origin, dataset_origin
from cxrdx.errors import CxrdxError, DataError
from cxrdx.imaging.jpeg import DecodeTarget, common_target

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
    origin: Origin | None = None  # what the dataset is (data.origin); None: not known
    # what the label table labels (LabelTable.findings); None: the columns named like a model output
    findings: tuple[str, ...] | None = None
    views_dropped: dict[str, int] = field(default_factory=dict)  # view -> images the view filter left out
    skipped: dict = field(default_factory=dict)  # model outputs this set does not label -> why (external.py)


def load_eval_set(
    path: str,
    split: str | None,
    images: str | None,
    labels: Sequence[str],
    *,
    views: str | None = None,
    uncertain: str = "ignore",
    blank: str = "negative",
    dataset: str | None = None,
) -> EvalSet:
    """A prepared cache directory (rows of ``split``) or a label CSV whose images are read from disk.

    ``views`` keeps those views only (``"frontal"``, ``"PA,AP"``; None: all), ``uncertain`` is the
    policy for -1 labels, ``blank`` for CheXpert / MIMIC-CXR "not mentioned" cells, ``dataset`` forces a CSV's layout (cxrdx.data.tables.read_labels).
    """
    from cxrdx.data.views import select_views

    p = Path(path)
    if is_cache(p):
        cache = open_cache(
            p, uncertain=uncertain, blank=blank
        )  # says why an unfinished or damaged cache cannot be used
        table = cache.index
        if split:
            present = sorted(set(table["split"]))
            table = table[table["split"] == split].reset_index(drop=True)
            if table.empty:
                raise DataError(f"{p}: no rows with split {split!r}; the cache holds splits {present}")
        desc = f"{p} (split {split})" if split else str(p)
        table, selection = select_views(table, views, desc)
        dropped = dict(selection.dropped) if selection else {}
        es = EvalSet(
            desc,
            table.reset_index(drop=True),
            cache_images=cache.images,
            origin=cache.origin,
            views_dropped=dropped,
        )
        return _finish_table(es, labels)
    if p.is_dir():
        raise DataError(
            f"{p}: a folder without {INDEX_FILE} and images.npy is not a prepared cache; run `cxrdx prepare`"
        )
    if not p.is_file():
        raise DataError(f"{p}: no such label CSV or prepared cache folder")
    from cxrdx.data.tables import read_label_table

    read = read_label_table(p, images, uncertain=uncertain, views=views, dataset=dataset, blank=blank)
    images_dir = Path(images) if images else None
    origin = dataset_origin([p], images, [read.dataset])
    es = EvalSet(
        str(p),
        read.frame,
        images_dir=images_dir,
        origin=origin,
        findings=read.findings,
        views_dropped=read.views_dropped,
    )
    return _finish_table(es, labels)


def _finish_table(es: EvalSet, labels: Sequence[str]) -> EvalSet:
    from cxrdx.evaluation.external import shared_findings

    table = es.table
    # partial labels: outputs the set does not label are skipped (NaN columns), never scored as negatives
    shared, es.skipped = shared_findings(table, list(labels), es.description, es.findings)
    table = table.assign(**{name: np.nan for name in es.skipped if name not in table.columns})
    if es.skipped:
        es.notes.append(
            f"{es.description}: {len(es.skipped)} model output(s) skipped (not labelled here): "
            f"{', '.join(es.skipped)}"
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


def _iter_images(
    es: EvalSet, batch_size: int, target: DecodeTarget | None = None
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """(positions into es.table, their gray images); unreadable rows omitted; ``target``: a large JPEG
    decoded at the reduced DCT scale every predictor's recipe allows (cxrdx.imaging.jpeg).

    From a cache: its uint8 squares (our recipe's ``Preprocessing.square``, v meaning v / 255). From
    files: the images as ``read_image`` gives them (8-bit files as uint8, as ``Predictor`` reads them),
    so each checkpoint's own recipe (crop, resize, bits) makes its inputs (``_inputs_for``).
    """
    n = len(es.table)
    if es.cache_images is not None:
        rows = es.table["row"].to_numpy()
        for start in range(0, n, batch_size):
            pos = np.arange(start, min(n, start + batch_size))
            yield pos, list(np.asarray(es.cache_images[rows[pos]]))
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
            image, _ = read_image(path, uint8_ok=True, target=target)
        except CxrdxError as exc:
            es.notes.append(f"skipped unreadable image: {exc}")
            continue
        pending_pos.append(i)
        pending.append(image)
        if len(pending) >= batch_size:
            yield np.asarray(pending_pos), pending
            pending_pos, pending = [], []
    if pending:
        yield np.asarray(pending_pos), pending


def _inputs_for(predictor: Predictor, images: list[np.ndarray]) -> np.ndarray:
    """The network inputs of this predictor's recipe: (B, C, S, S), or (B, V, C, S, S) for ten-crop."""
    prep = predictor.meta.preprocessing
    views = np.stack([prep.views(image)[0] for image in images])
    return views[:, 0] if views.shape[1] == 1 else views


def _cache_note(predictors: Sequence[Predictor], es: EvalSet) -> None:
    """A cache holds our recipe's 8-bit letterboxed squares: another recipe starts from those, not the films."""
    if es.cache_images is None:
        return
    side = es.cache_images.shape[-1]
    for p in predictors:
        prep = p.meta.preprocessing
        if (prep.fit, prep.resize, prep.bits, prep.size) != ("letterbox", "pil", 8, side):
            es.notes.append(
                f"{es.description}: the prepared cache holds {side} px letterboxed 8-bit squares; a checkpoint "
                f"fed {prep.describe()} gets its recipe applied to those squares, not to the original films "
                "(evaluate on the label CSV and image folder for its publisher's exact input)"
            )


def run_views(
    predictors: Sequence[Predictor], es: EvalSet, tta: bool, batch_size: int = 32, progress: bool = True
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per predictor the (V, n_ok, L) raw (uncalibrated) outputs of its V views, and the table positions."""
    from tqdm import tqdm

    views_all: list[list[np.ndarray]] = [[] for _ in predictors]
    pos_all = []
    _cache_note(predictors, es)
    bar = tqdm(total=len(es.table), desc="evaluate", unit="img", disable=not progress, file=sys.stderr)
    target = common_target([p.meta.preprocessing.decode_target for p in predictors])
    for pos, images in _iter_images(es, batch_size, target):
        for k, p in enumerate(predictors):
            views_all[k].append(p.raw_views(_inputs_for(p, images), tta=tta))
        pos_all.append(pos)
        bar.update(len(pos))
    bar.close()
    if not pos_all:
        raise DataError(f"{es.description}: none of the {len(es.table)} images could be read")
    return [np.concatenate(v, axis=1) for v in views_all], np.concatenate(pos_all)


def combine(
    predictors: Sequence[Predictor],
    views: Sequence[np.ndarray],
    calibrations: Sequence[dict | None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities and spread from raw views, each predictor with its calibration (default: its own).

    Spread: one checkpoint -> standard deviation over the TTA views (None without TTA);
    an ensemble -> standard deviation across the checkpoints (each TTA-averaged).
    """
    from cxrdx.metrics.calibration import combine_views

    cals = list(calibrations) if calibrations is not None else [p.calibration for p in predictors]
    outs = [combine_views(v, c, p.labels) for p, v, c in zip(predictors, views, cals, strict=True)]
    if len(outs) == 1:
        return outs[0]
    stack = np.stack([o[0] for o in outs])
    return stack.mean(0), stack.std(0)


def run_inference(
    predictors: Sequence[Predictor], es: EvalSet, tta: bool, batch_size: int = 32, progress: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Calibrated probabilities (n_ok, L), spread (n_ok, L) or None, and the table positions they belong to."""
    views, pos = run_views(predictors, es, tta, batch_size, progress)
    probs, spread = combine(predictors, views)
    return probs, spread, pos
