"""Calibration recorded by training: the loss's prior shift in every checkpoint, a temperature at the end.

Every checkpoint ``train`` writes carries method ``"prior"`` (the class weights w_pos / w_neg
of the loss, whose log ratio shifts every logit; ``cxrdx.metrics.calibration``). When the
run ends, a per-finding temperature is fitted on the validation predictions of the epoch
each file holds (best and last), which makes them ``"prior+temperature"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrdx.labels import FINDINGS
from cxrdx.metrics.calibration import fit_calibration, prior_calibration


def prior_from_weights(w_pos: np.ndarray, w_neg: np.ndarray, names=FINDINGS) -> dict:
    """Method "prior" from the loss's class weights (computed on the training split), per output ``names``."""
    w_pos, w_neg = np.asarray(w_pos).reshape(-1), np.asarray(w_neg).reshape(-1)
    return prior_calibration(list(names), w_pos, w_neg, "training class weights log(w_pos / w_neg)")


def fit_temperature_into(path: Path, probs: np.ndarray, labels: np.ndarray, fitted_on: dict) -> dict:
    """Fit the temperature on (raw sigmoid) validation outputs and store it in the checkpoint at ``path``."""
    from cxrdx.model.checkpoint import update_checkpoint_meta

    def change(meta) -> None:
        meta.calibration = fit_calibration(
            labels, probs, meta.labels, meta.calibration, {**fitted_on, "n_images": int(len(labels))}
        )

    return update_checkpoint_meta(path, change).calibration
