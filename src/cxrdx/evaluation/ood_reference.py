"""The out-of-distribution reference for a checkpoint that has none (an import), from the user's data.

``cxrdx train`` fits it from its own training and validation splits. An imported
checkpoint (CheXNet, torchxrayvision, ...) arrives without one, so ``cxrdx calibrate``
fits it from the labelled data it is given (``cxrdx.model.ood`` has the method):

- a prepared cache with a ``train`` split other than the calibration split: the
  reference (mean, shrunk covariance) from up to ``MAX_TRAIN`` training images, the
  threshold from the calibration split;
- otherwise (a label CSV, or a cache with one split): the calibration images split
  by patient, two in three patients for the reference and one in three for the
  threshold, because a threshold taken from the images that made the reference (or
  from the same patients' other films) would be too low (their distances are
  optimistically small) and flag too many good images.

Both halves keep only the views calibration uses (``views``, frontal by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cxrdx.evaluation.eval_set import EvalSet
    from cxrdx.inference.predictor import Predictor

THRESHOLD_EVERY = 3  # without a training split: every third patient's images set the threshold


def threshold_rows(patients: Any) -> np.ndarray:
    """Boolean per row: True for the rows whose patient sets the threshold (every ``THRESHOLD_EVERY``-th
    patient in order of first appearance, first one included), so no patient is in both halves."""
    import pandas as pd

    codes, _ = pd.factorize(np.asarray(patients, dtype=str))
    return codes % THRESHOLD_EVERY == 0


class _Rows:
    """uint8 squares of chosen cache rows, in ``cxrdx.model.ood``'s batch-source interface."""

    def __init__(self, images: np.ndarray, rows: np.ndarray) -> None:
        self.images, self.rows = images, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def squares(self, positions: Any) -> np.ndarray:
        # ascending rows read the memmap sequentially; the statistics do not depend on the order
        return np.asarray(self.images[np.sort(self.rows[np.asarray(positions, dtype=np.int64)])])


def fit_ood_reference(
    predictor: Predictor, es: EvalSet, data: str, split: str | None, views: str | None = "frontal"
) -> dict:
    """The ``ood`` record for ``predictor``'s checkpoint from the evaluation set ``es`` (see module doc)."""
    from cxrdx.data.cache import is_cache, open_cache
    from cxrdx.data.views import filter_views
    from cxrdx.model.ood import fit_ood_for

    if es.cache_images is not None:
        val: Any = _Rows(es.cache_images, es.table["row"].to_numpy())
        index = open_cache(data).index if is_cache(data) else None
        train = (
            filter_views(index[index["split"] == "train"], views, f"{data} (split train)")
            if index is not None
            and split != "train"
            and "split" in index.columns
            and (index["split"] == "train").any()
            else None
        )
        train_rows = np.zeros(0, np.int64) if train is None else train["row"].to_numpy()
        if len(train_rows) >= 2:
            where = {"reference": f"{data} (split train)", "threshold": es.description}
            return fit_ood_for(predictor, _Rows(es.cache_images, train_rows), val, fitted_on=where)
        to_threshold = threshold_rows(es.table["patient"])
        ref = _Rows(es.cache_images, val.rows[~to_threshold])
        thr = _Rows(es.cache_images, val.rows[to_threshold])
    else:
        items = np.array([str(p) for p in es.table["path"].fillna("")], dtype=object)
        to_threshold = threshold_rows(es.table["patient"])
        ref, thr = list(items[~to_threshold]), list(items[to_threshold])
    where = {
        "reference": f"{es.description}: 2 of every {THRESHOLD_EVERY} patients",
        "threshold": f"{es.description}: the other patients (1 of every {THRESHOLD_EVERY})",
    }
    return fit_ood_for(predictor, ref, thr, fitted_on=where)
