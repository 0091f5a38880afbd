"""Calibration: reliability bins and the expected calibration error (10 equal-width bins per class)."""

from __future__ import annotations

import numpy as np

ECE_BINS = 10


def calibration_bins(y: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Equal-width bins on [0, 1]: count, mean predicted probability and observed frequency per bin."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(y, dtype=np.float64)
    idx = np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=probs, minlength=n_bins) / count
        freq = np.bincount(idx, weights=y, minlength=n_bins) / count
    return {"count": count, "confidence": conf, "frequency": freq}


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float | None:
    """Sum over bins of (bin share) x |observed frequency - mean predicted probability|."""
    if len(y) == 0:
        return None
    b = calibration_bins(y, probs, n_bins)
    used = b["count"] > 0
    return float(np.sum(b["count"][used] / len(y) * np.abs(b["frequency"][used] - b["confidence"][used])))
