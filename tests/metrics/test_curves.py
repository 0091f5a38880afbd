"""ROC / PR curves and average precision against scikit-learn, the reference they re-state."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from cxrdx.metrics.auroc import fast_auroc
from cxrdx.metrics.curves import average_precision, precision_recall_curve, roc_curve


def _cases():
    rng = np.random.default_rng(3)
    for n, levels in ((50, None), (200, 7), (31, 2), (1000, None)):
        y = (rng.random(n) < 0.3).astype(int)
        y[:2] = [0, 1]  # both classes
        s = rng.random(n) if levels is None else rng.integers(0, levels, n) / levels  # ties
        yield y, s + 0.4 * y * rng.random(n)


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: f"n{len(c[0])}")
def test_average_precision_equals_scikit_learns(case):
    y, s = case
    assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: f"n{len(c[0])}")
def test_precision_recall_curve_equals_scikit_learns(case):
    y, s = case
    precision, recall = precision_recall_curve(y, s)
    want_p, want_r, _ = sk.precision_recall_curve(y, s)
    np.testing.assert_allclose(precision, want_p, atol=1e-12)
    np.testing.assert_allclose(recall, want_r, atol=1e-12)


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: f"n{len(c[0])}")
def test_roc_curve_has_scikit_learns_points_and_area(case):
    """scikit-learn drops collinear points by default; with ``drop_intermediate=False`` the curves are equal."""
    y, s = case
    fpr, tpr, thresholds = roc_curve(y, s)
    want_f, want_t, want_th = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_f, atol=1e-12)
    np.testing.assert_allclose(tpr, want_t, atol=1e-12)
    np.testing.assert_array_equal(thresholds[1:], want_th[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert fast_auroc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_a_hand_worked_example():
    # scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1
    y, s = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    fpr, tpr, _ = roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])


def test_cxrdx_itself_never_imports_scikit_learn():
    """Its vendored OpenMP runtime would sit beside PyTorch's in every process that evaluates."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "cxrdx"
    found = []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(src)}: {n}" for n in names if n.split(".")[0] == "sklearn"]
    assert not found, found
