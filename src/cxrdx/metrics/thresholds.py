"""Operating thresholds and the binary metrics at a threshold.

Thresholds are chosen on validation data only (Youden's J by default, or the
highest threshold that reaches a target sensitivity) and then applied to the test
set: choosing them on the test set would make the test metrics optimistic.
A prediction is positive when ``p >= threshold`` (the rule ``Predictor`` uses).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrdx.errors import ConfigError
from cxrdx.labels import FINDINGS


def threshold_table(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct score as a threshold (descending) with true and false positives at ``p >= t``."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    yy = np.asarray(y, dtype=np.int64)[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct value
    tp = np.cumsum(yy)[last]
    fp = last + 1 - tp
    return s[last], tp, fp


def youden_threshold(y: np.ndarray, scores: np.ndarray) -> float | None:
    """The threshold maximising sensitivity + specificity - 1 (the highest one among ties)."""
    p = int(np.sum(y))
    n = len(y) - p
    if p == 0 or n == 0:
        return None
    t, tp, fp = threshold_table(y, scores)
    j = tp / p + (n - fp) / n - 1
    return float(t[int(np.argmax(j))])


def sensitivity_threshold(y: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The highest threshold whose sensitivity reaches ``target`` (best specificity at that sensitivity)."""
    p = int(np.sum(y))
    if p == 0 or p == len(y):
        return None
    t, tp, _ = threshold_table(y, scores)
    reach = np.nonzero(tp / p >= target)[0]
    return float(t[reach[0]])


def choose_thresholds(
    y_true: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str] = FINDINGS,
    method: str = "youden",
    target_sensitivity: float = 0.9,
) -> dict[str, float | None]:
    """Per-class thresholds on *validation* data; None for classes that are undefined there."""
    if method not in ("youden", "sensitivity"):
        raise ConfigError(f"threshold method must be 'youden' or 'sensitivity', got {method!r}")
    if method == "sensitivity" and not 0 < target_sensitivity <= 1:
        raise ConfigError(f"--target-sensitivity must be in (0, 1], got {target_sensitivity}")
    out: dict[str, float | None] = {}
    for c, name in enumerate(names):
        y, s = np.asarray(y_true, dtype=np.float64)[:, c], np.asarray(probs)[:, c]
        y, s = y[~np.isnan(y)], s[~np.isnan(y)]  # NaN = unlabelled: thresholds use labelled images only
        out[name] = (
            youden_threshold(y, s) if method == "youden" else sensitivity_threshold(y, s, target_sensitivity)
        )
    return out


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def binary_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """Sensitivity, specificity, PPV, NPV, F1 at ``p >= threshold`` (None where a ratio is 0/0)."""
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(scores) >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
