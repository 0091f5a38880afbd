"""Operating thresholds (Youden, target sensitivity) and the binary metrics at a threshold."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdx.labels import FINDINGS
from cxrdx.metrics.thresholds import (
    binary_metrics,
    choose_thresholds,
    sensitivity_threshold,
    youden_threshold,
)


def _random_set(rng, n=300, n_patients=90, names=FINDINGS):
    y = (rng.random((n, len(names))) < 0.3).astype(np.int64)
    probs = np.clip(0.3 * y + rng.random((n, len(names))) * 0.7, 0, 1)
    patients = rng.integers(0, n_patients, n).astype(str)
    return y, probs, patients


def _brute_force_youden(y, s):
    p, n = y.sum(), len(y) - y.sum()
    best_j, best_t = -np.inf, None
    for t in sorted(np.unique(s), reverse=True):
        pred = s >= t
        tp = int(np.sum(pred & (y == 1)))
        tn = int(np.sum(~pred & (y == 0)))
        j = tp / p + tn / n - 1
        if j > best_j:
            best_j, best_t = j, t
    return best_t, best_j


@pytest.mark.parametrize("seed", range(5))
def test_youden_threshold_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(np.clip(0.2 * y + rng.random(200), 0, 1), 2)
    t, j = _brute_force_youden(y, s)
    assert youden_threshold(y, s) == t
    m = binary_metrics(y, s, youden_threshold(y, s))
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(j)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95])
def test_target_sensitivity_threshold_reaches_target_and_is_the_highest(target):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 300)
    s = np.clip(0.25 * y + rng.random(300), 0, 1)
    t = sensitivity_threshold(y, s, target)
    assert binary_metrics(y, s, t)["sensitivity"] >= target
    higher = s[s > t]
    if len(higher):
        assert binary_metrics(y, s, higher.min())["sensitivity"] < target


def test_choose_thresholds_none_for_classes_without_positives():
    rng = np.random.default_rng(8)
    y, probs, _ = _random_set(rng)
    y[:, 0] = 0
    th = choose_thresholds(y, probs, FINDINGS, "sensitivity", 0.9)
    assert th["Atelectasis"] is None
    assert all(isinstance(th[n], float) for n in FINDINGS[1:])


def test_binary_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.05])
    m = binary_metrics(y, s, 0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["ppv"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 / 3)
    assert binary_metrics(y, s, 2.0)["ppv"] is None  # no positive calls: undefined, not NaN
