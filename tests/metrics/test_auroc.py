"""AUROC: equal to scikit-learn, the patient-level bootstrap CI, undefined classes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrdx.labels import FINDINGS
from cxrdx.metrics.auroc import (
    auroc_with_ci,
    fast_auroc,
    mean_auroc,
    mean_auroc_ci,
    patient_multiplicities,
    resample_by_patient,
)


def _random_set(rng, n=300, n_patients=90, names=FINDINGS):
    y = (rng.random((n, len(names))) < 0.3).astype(np.int64)
    probs = np.clip(0.3 * y + rng.random((n, len(names))) * 0.7, 0, 1)
    patients = rng.integers(0, n_patients, n).astype(str)
    return y, probs, patients


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_auroc_equals_sklearn_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500), 2)  # many ties
    assert fast_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    w = rng.integers(0, 4, 500)
    rep = np.repeat(np.arange(500), w)
    assert fast_auroc(y, s, w) == pytest.approx(roc_auc_score(y[rep], s[rep]), abs=1e-12)


def test_fast_auroc_undefined_without_both_classes():
    assert fast_auroc(np.zeros(10), np.linspace(0, 1, 10)) is None
    assert fast_auroc(np.ones(10), np.linspace(0, 1, 10)) is None


def test_auroc_point_equals_sklearn_and_ci_contains_it():
    rng = np.random.default_rng(3)
    y, probs, patients = _random_set(rng)
    res = auroc_with_ci(y, probs, patients, n_boot=300, seed=1)
    for c, name in enumerate(FINDINGS):
        r = res[name]
        assert r.auroc == pytest.approx(roc_auc_score(y[:, c], probs[:, c]), abs=1e-12)
        assert r.ci_low < r.auroc < r.ci_high
        assert r.n_boot_valid == 300
        assert r.ci_low > 0.5 and r.ci_high <= 1.0


def test_ci_narrows_with_more_patients_not_more_images_per_patient():
    rng = np.random.default_rng(4)
    y, probs, _ = _random_set(rng, n=400, names=FINDINGS[:1])
    few = np.repeat(np.arange(20), 20).astype(str)  # 20 patients x 20 images
    many = np.arange(400).astype(str)
    w_few = auroc_with_ci(y, probs, few, FINDINGS[:1], n_boot=300)["Atelectasis"]
    w_many = auroc_with_ci(y, probs, many, FINDINGS[:1], n_boot=300)["Atelectasis"]
    assert (w_few.ci_high - w_few.ci_low) > (w_many.ci_high - w_many.ci_low)


def test_patient_bootstrap_never_splits_a_patient():
    rng = np.random.default_rng(5)
    patients = np.array(["p1", "p1", "p1", "p2", "p3", "p3", "p4", "p5", "p5", "p5", "p5"])
    counts = patient_multiplicities(patients, 200, rng)
    assert counts.shape == (200, len(patients))
    for pid in set(patients):
        cols = counts[:, patients == pid]
        assert (cols == cols[:, :1]).all()  # every image of a patient has the patient's multiplicity
    assert (counts[:, [0, 3, 4, 6, 7]].sum(1) == 5).all()  # one image per patient: 5 draws per replicate
    for _ in range(50):
        idx = resample_by_patient(patients, rng)
        drawn = patients[idx]
        for pid in set(drawn):
            n_images = int((patients == pid).sum())
            assert (drawn == pid).sum() % n_images == 0
            per_image = np.bincount(idx[drawn == pid], minlength=len(patients))[patients == pid]
            assert len(set(per_image)) == 1


def test_undefined_classes_are_left_out_of_the_mean():
    rng = np.random.default_rng(6)
    y, probs, patients = _random_set(rng)
    y[:, FINDINGS.index("Hernia")] = 0
    y[:, FINDINGS.index("Edema")] = 1
    res = auroc_with_ci(y, probs, patients, n_boot=50)
    assert [k for k, r in res.items() if not r.defined] == ["Edema", "Hernia"]
    assert res["Hernia"].auroc is None and res["Hernia"].ci_low is None
    mean = mean_auroc({k: r.auroc for k, r in res.items()})
    assert mean == pytest.approx(np.mean([r.auroc for r in res.values() if r.defined]))
    assert np.isfinite(mean)
    assert mean_auroc({"Hernia": None}) is None


def test_degenerate_bootstrap_replicates_are_skipped_and_counted():
    y = np.zeros((40, 1), dtype=np.int64)
    y[0, 0] = 1  # one positive, in one patient
    probs = np.linspace(0, 1, 40)[:, None]
    res = auroc_with_ci(y, probs, np.arange(40).astype(str), FINDINGS[:1], n_boot=200)["Atelectasis"]
    assert 0 < res.n_boot_valid < 200  # replicates without the positive patient are left out


def test_mean_auroc_ci_is_the_bootstrap_of_the_mean_over_defined_findings():
    rng = np.random.default_rng(3)
    n = 400
    patients = np.repeat(np.arange(n // 4), 4)
    y = np.zeros((n, 3), np.int64)
    y[:, 0] = rng.random(n) < 0.3
    y[:, 1] = rng.random(n) < 0.5  # column 2 has no positives: undefined, left out of the mean
    probs = np.clip(y * 0.3 + rng.random((n, 3)) * 0.7, 0, 1)
    res = auroc_with_ci(y, probs, patients, ["Atelectasis", "Effusion", "Hernia"], n_boot=300, seed=1)
    lo, hi = mean_auroc_ci(res)
    mean = mean_auroc({k: r.auroc for k, r in res.items()})
    assert lo < mean < hi
    # the same replicates, averaged by hand
    by_hand = np.percentile((res["Atelectasis"].replicates + res["Effusion"].replicates) / 2, [2.5, 97.5])
    np.testing.assert_allclose([lo, hi], by_hand)
    # the mean's CI lies inside the span of the per-finding CIs
    assert min(r.ci_low for r in res.values() if r.defined) <= lo
    assert hi <= max(r.ci_high for r in res.values() if r.defined)
    assert mean_auroc_ci({}) == (None, None)
