"""ROC and precision-recall curves and average precision, in numpy.

One pass over the scores sorted high to low: at each distinct score the cumulative true and false
positives. ``average_precision`` is the step-wise sum scikit-learn's ``average_precision_score``
computes, sum over thresholds of (R_n - R_(n-1)) P_n, with no interpolation; tests hold all three
to scikit-learn (a test-only dependency). Why not scikit-learn itself: it brings its own OpenMP
runtime (a vendored libgomp) into a process that already has PyTorch's, and two OpenMP runtimes
in one process are a known crash source (the Makefile's note on the test suite).
"""

from __future__ import annotations

import numpy as np


def _counts(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false positives, threshold) at each distinct score, highest first."""
    y = np.asarray(y, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != scores.shape:
        raise ValueError(f"labels {y.shape} and scores {scores.shape} differ in shape")
    order = np.argsort(scores, kind="mergesort")[::-1]
    s, y = scores[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each tie group
    tps = np.cumsum(y)[last]
    return tps, (last + 1) - tps, s[last]


def roc_curve(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), from (0, 0) at threshold +inf; every
    distinct score is a point (scikit-learn also drops the points collinear with their neighbours)."""
    tps, fps, thresholds = _counts(y, scores)
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    with np.errstate(invalid="ignore", divide="ignore"):
        return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def precision_recall_curve(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at every distinct score, recall falling, then the point (precision 1, recall 0)
    last, as scikit-learn returns them."""
    tps, fps, _ = _counts(y, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tps / tps[-1]
    return np.r_[(tps / (tps + fps))[::-1], 1.0], np.r_[recall[::-1], 0.0]


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """Sum over distinct thresholds, highest first, of (R_n - R_(n-1)) P_n (NaN without positives)."""
    tps, fps, _ = _counts(y, scores)
    if tps[-1] <= 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
