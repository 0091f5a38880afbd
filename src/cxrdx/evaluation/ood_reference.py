"""The out-of-distribution reference for a checkpoint that has none (an import), from the user's data.

``cxrdx train`` fits it from its own training and validation splits. An imported
checkpoint (CheXNet, torchxrayvision, ...) arrives without one, so ``cxrdx calibrate``
fits it from the labelled data it is given (``cxrdx.model.ood`` has the method):

- a prepared cache with a ``train`` split other than the calibration split: the
  reference (mean, shrunk covariance) from up to ``MAX_TRAIN`` training images, the
  threshold from the calibration split;
- otherwise (a label CSV, or a cache with one split): the calibration images split
  by position, two in three for the reference and one in three for the threshold,
  because a threshold taken from the images that made the reference would be too
  low (their distances are optimistically small) and flag too many good images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cxrdx.evaluation.eval_set import EvalSet
    from cxrdx.inference.predictor import Predictor

THRESHOLD_EVERY = 3  # without a training split: every third image sets the threshold


class _Rows:
    """uint8 squares of chosen cache rows, in ``cxrdx.model.ood``'s batch-source interface."""

    def __init__(self, images: np.ndarray, rows: np.ndarray) -> None:
        self.images, self.rows = images, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def squares(self, positions: Any) -> np.ndarray:
        # ascending rows read the memmap sequentially; the statistics do not depend on the order
        return np.asarray(self.images[np.sort(self.rows[np.asarray(positions, dtype=np.int64)])])


def fit_ood_reference(predictor: Predictor, es: EvalSet, data: str, split: str | None) -> dict:
    """The ``ood`` record for ``predictor``'s checkpoint from the evaluation set ``es`` (see module doc)."""
    from cxrdx.data.cache import is_cache, open_cache
    from cxrdx.model.ood import fit_ood_for

    if es.cache_images is not None:
        val: Any = _Rows(es.cache_images, es.table["row"].to_numpy())
        index = open_cache(data).index if is_cache(data) else None
        train_rows = (
            index.loc[index["split"] == "train", "row"].to_numpy()
            if index is not None and split != "train" and "split" in index.columns
            else np.zeros(0, np.int64)
        )
        if len(train_rows) >= 2:
            where = {"reference": f"{data} (split train)", "threshold": es.description}
            return fit_ood_for(predictor, _Rows(es.cache_images, train_rows), val, fitted_on=where)
        every = np.arange(len(val))
        ref = _Rows(es.cache_images, val.rows[every % THRESHOLD_EVERY != 0])
        thr = _Rows(es.cache_images, val.rows[every % THRESHOLD_EVERY == 0])
    else:
        items = [str(p) for p in es.table["path"].fillna("")]
        ref = [p for i, p in enumerate(items) if i % THRESHOLD_EVERY != 0]
        thr = items[::THRESHOLD_EVERY]
    where = {
        "reference": f"{es.description}: 2 of every {THRESHOLD_EVERY} images",
        "threshold": f"{es.description}: the other images (1 of every {THRESHOLD_EVERY})",
    }
    return fit_ood_for(predictor, ref, thr, fitted_on=where)
