"""The weighted BCE equals the seed's formula written naively, and balances each class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrdx.errors import DataError
from cxrdx.training.loss import EPS, WeightedBCEWithLogits, class_weights


def naive_loss(logits: np.ndarray, y: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> float:
    """The seed's formula, literally: -sum_c mean_n(w_pos*y*log(p+eps) + w_neg*(1-y)*log(1-p+eps))."""
    p = 1.0 / (1.0 + np.exp(-logits))
    total = 0.0
    for c in range(y.shape[1]):
        terms = w_pos[c] * y[:, c] * np.log(p[:, c] + EPS) + w_neg[c] * (1 - y[:, c]) * np.log(
            1 - p[:, c] + EPS
        )
        total -= terms.mean()
    return float(total)


def random_problem(seed: int, n: int = 257, c: int = 14, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.02, 0.6, size=c)
    y = (rng.random((n, c)) < freq).astype(np.float64)
    y[0], y[1] = 1, 0  # every class has both labels
    logits = rng.normal(0, scale, size=(n, c))
    return logits, y


def test_class_weights_are_negative_and_positive_frequencies():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 1]], dtype=np.uint8)
    w_pos, w_neg = class_weights(y)
    np.testing.assert_allclose(w_pos, [0.5, 0.75])
    np.testing.assert_allclose(w_neg, [0.5, 0.25])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_formula(seed):
    logits, y = random_problem(seed)
    w_pos, w_neg = class_weights(y)
    expected = naive_loss(logits, y, w_pos.astype(np.float64), w_neg.astype(np.float64))
    loss = WeightedBCEWithLogits(w_pos, w_neg)
    got64 = loss(torch.from_numpy(logits), torch.from_numpy(y)).item()
    assert got64 == pytest.approx(expected, abs=1e-6, rel=0)
    got32 = loss(torch.from_numpy(logits).float(), torch.from_numpy(y).float()).item()
    assert got32 == pytest.approx(expected, rel=1e-6, abs=1e-5)


def test_extreme_logits_stay_finite_and_match():
    # sigmoid(+-40) is exactly 1/0 in float32; the formula's eps keeps the log finite.
    logits, y = random_problem(3, n=64, scale=40.0)
    w_pos, w_neg = class_weights(y)
    expected = naive_loss(logits, y, w_pos.astype(np.float64), w_neg.astype(np.float64))
    got = WeightedBCEWithLogits(w_pos, w_neg)(torch.from_numpy(logits).float(), torch.from_numpy(y).float())
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_per_image_reduction_averages_to_the_loss():
    logits, y = random_problem(4)
    w_pos, w_neg = class_weights(y)
    x, t = torch.from_numpy(logits), torch.from_numpy(y)
    per_image = WeightedBCEWithLogits(w_pos, w_neg, reduction="none")(x, t)
    assert per_image.shape == (len(y),)
    assert per_image.mean().item() == pytest.approx(
        WeightedBCEWithLogits(w_pos, w_neg)(x, t).item(), abs=1e-9
    )


def test_each_class_gets_equal_weight_from_positives_and_negatives():
    # At p = 0.5 every term has the same log, so a class's positive part and negative part
    # differ only through the weights times the counts: they must be equal.
    _, y = random_problem(5, n=1000)
    w_pos, w_neg = class_weights(y)
    zeros = torch.zeros(y.shape, dtype=torch.float64)
    yt = torch.from_numpy(y)
    pos_only = WeightedBCEWithLogits(w_pos, np.zeros_like(w_neg), reduction="none")
    neg_only = WeightedBCEWithLogits(np.zeros_like(w_pos), w_neg, reduction="none")
    for c in range(y.shape[1]):
        mask = torch.zeros(y.shape[1], dtype=torch.float64)
        mask[c] = 1
        pos_part = pos_only(zeros, yt * mask).sum().item()
        neg_part = neg_only(zeros, yt * mask + (1 - mask)).sum().item()
        assert pos_part > 0
        assert pos_part == pytest.approx(neg_part, rel=1e-6)
    # Unweighted BCE would not balance them: the rarest class shows the imbalance.
    rare = int(np.argmin(y.mean(axis=0)))
    assert y[:, rare].sum() < 0.5 * (1 - y[:, rare]).sum()


def test_weights_reject_bad_labels():
    with pytest.raises(DataError):
        class_weights(np.zeros((0, 14)))
    with pytest.raises(DataError):
        class_weights(np.full((3, 14), 2))


def test_shape_mismatch_is_an_error():
    loss = WeightedBCEWithLogits(np.ones(14), np.ones(14))
    with pytest.raises(ValueError):
        loss(torch.zeros(2, 13), torch.zeros(2, 13))
