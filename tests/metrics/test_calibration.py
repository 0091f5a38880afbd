"""Expected calibration error."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdx.metrics.calibration import expected_calibration_error


def test_ece_zero_when_calibrated_and_positive_when_not():
    rng = np.random.default_rng(9)
    p = rng.random(200_000)
    y = (rng.random(200_000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, p**3) > 0.1
    assert expected_calibration_error(np.array([1, 0, 1, 0]), np.array([1.0, 0.0, 1.0, 0.0])) == 0.0


# --------------------------------------------------------------------------- scores -> probabilities

from cxrdx.metrics.calibration import (  # noqa: E402
    apply_calibration,
    calibration_table,
    fit_calibration,
    fit_platt,
    fit_temperature,
    logit,
    map_thresholds,
    none_calibration,
    prior_calibration,
    resolve_calibration,
    sigmoid,
)

NAMES = ["Effusion", "Hernia"]


def test_weighted_bce_shifts_a_constant_logit_to_half_and_the_prior_undoes_it():
    """The seed's loss on a base-rate input: minimiser p = 0.5 for any prevalence; "prior" gives back f."""
    import torch

    from cxrdx.training.loss import WeightedBCEWithLogits, class_weights

    rng = np.random.default_rng(0)
    f = np.array([0.10, 0.01])
    y = (rng.random((20_000, 2)) < f).astype(np.float32)
    w_pos, w_neg = class_weights(y)
    x = torch.zeros(1, 2, requires_grad=True)
    loss_fn, opt = WeightedBCEWithLogits(w_pos, w_neg), torch.optim.LBFGS([x], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = loss_fn(x.expand(len(y), 2), torch.from_numpy(y))
        loss.backward()
        return loss

    opt.step(closure)
    raw = torch.sigmoid(x).detach().numpy()[0]
    assert raw == pytest.approx([0.5, 0.5], abs=2e-3)  # a true 1 % risk shown as 50 %
    cal = prior_calibration(NAMES, w_pos, w_neg, "test")
    assert apply_calibration(raw[None], cal, NAMES)[0] == pytest.approx(y.mean(0), abs=2e-3)


def test_prior_shift_is_undone_exactly():
    rng = np.random.default_rng(1)
    p = rng.random((1000, 2))
    w_pos, w_neg = np.array([0.9, 0.99]), np.array([0.1, 0.01])
    shifted = sigmoid(logit(p) + np.log(w_pos / w_neg))  # the weighted loss's optimum
    cal = prior_calibration(NAMES, w_pos, w_neg, "test")
    assert np.abs(apply_calibration(shifted, cal, NAMES) - p).max() < 1e-9
    assert apply_calibration(shifted, none_calibration(), NAMES) is not None
    assert np.array_equal(apply_calibration(shifted, none_calibration(), NAMES), shifted)


def test_temperature_and_platt_recover_known_parameters():
    rng = np.random.default_rng(2)
    z_true = rng.normal(-1.0, 2.0, 40_000)
    y = (rng.random(len(z_true)) < sigmoid(z_true)).astype(float)
    assert fit_temperature(3.0 * z_true, y) == pytest.approx(3.0, rel=0.05)
    shift, temp = fit_platt(0.5 * z_true + 2.0, y)  # z_true = z / 0.5 - 4
    assert shift == pytest.approx(4.0, abs=0.1) and temp == pytest.approx(0.5, rel=0.05)
    assert fit_temperature(3.0 * (z_true + 1.0), y, shift=1.0) == pytest.approx(3.0, rel=0.05)


def test_fit_calibration_halves_ece_and_fixes_calibration_in_the_large():
    rng = np.random.default_rng(3)
    f = np.array([0.12, 0.03])
    w_pos, w_neg = 1 - f, f
    z_true = rng.normal(logit(f), 1.5, (20_000, 2))
    y = (rng.random(z_true.shape) < sigmoid(z_true)).astype(float)
    # what a weighted-BCE network outputs: shifted by log(w_pos / w_neg), and over-confident
    raw = sigmoid(1.6 * (z_true + np.log(w_pos / w_neg)))
    val, test = slice(0, 10_000), slice(10_000, None)
    base = prior_calibration(NAMES, w_pos, w_neg, "test")
    cal = fit_calibration(y[val], raw[val], NAMES, base, {"split": "val"})
    assert cal["method"] == "prior+temperature"
    assert cal["log_prior_shift"] == base["log_prior_shift"]
    assert all(t == pytest.approx(1.6, rel=0.1) for t in cal["temperature"].values())
    table = calibration_table(y[test], raw[test], apply_calibration(raw[test], cal, NAMES), NAMES)
    for row in table.values():
        assert row["ece_after"] <= row["ece_before"] / 2
        assert abs(row["mean_predicted_after"] - row["prevalence"]) < 0.01
        assert abs(row["mean_predicted_before"] - row["prevalence"]) > 0.1
    # unknown prior (an imported network): the shift is fitted too (Platt) and does as well
    platt = fit_calibration(y[val], raw[val], NAMES, None, {})
    assert platt["fitted_on"]["prior"].startswith("fitted")
    after = apply_calibration(raw[test], platt, NAMES)
    assert all(r["ece_after"] < 0.02 for r in calibration_table(y[test], raw[test], after, NAMES).values())


def test_temperature_keeps_a_base_rate_image_at_the_training_prevalence():
    cal = prior_calibration(NAMES, [0.9, 0.99], [0.1, 0.01], "test")
    for t in (0.3, 1.0, 5.0):
        cal_t = {**cal, "method": "prior+temperature", "temperature": {n: t for n in NAMES}}
        assert apply_calibration(np.array([[0.5, 0.5]]), cal_t, NAMES)[0] == pytest.approx([0.1, 0.01])


def test_a_temperature_needs_enough_positives_on_top_of_a_known_prior():
    rng = np.random.default_rng(6)
    raw = rng.random((300, 2))
    y = (rng.random((300, 2)) < raw).astype(float)
    y[:, 1] = 0
    y[:3, 1] = 1  # 3 positives: too few to fit a temperature
    base = prior_calibration(NAMES, [0.7, 0.99], [0.3, 0.01], "test")
    cal = fit_calibration(y, raw, NAMES, base, {})
    assert cal["temperature"]["Hernia"] == 1.0 and cal["temperature"]["Effusion"] != 1.0


def test_fit_calibration_skips_findings_without_both_classes_and_masks_unlabelled():
    rng = np.random.default_rng(4)
    raw = rng.random((200, 2))
    y = np.zeros((200, 2))
    y[:, 0] = rng.random(200) < raw[:, 0]
    y[:50, 0] = np.nan  # unlabelled rows are left out
    cal = fit_calibration(y, raw, NAMES, None, {})
    assert cal["temperature"]["Hernia"] == 1.0 and "Hernia" in cal["fitted_on"]["temperature_kept_at_1"]
    assert np.isfinite(cal["temperature"]["Effusion"])
    assert calibration_table(y, raw, raw, NAMES)["Effusion"]["prevalence"] == pytest.approx(
        np.nanmean(y[:, 0])
    )


def test_calls_are_unchanged_by_calibration_at_mapped_thresholds():
    """The transform is monotone: thresholds moved onto the calibrated scale give the same calls."""
    from cxrdx.metrics.thresholds import choose_thresholds

    rng = np.random.default_rng(5)
    raw = rng.random((3000, 2)).astype(np.float32) ** 3
    raw[:5] = np.array([0.0, 1.0], dtype=np.float32)  # the float32 extremes stay ordered
    raw[5:10] = np.float32(1.0) - np.float32(6e-8)
    y = (rng.random((3000, 2)) < 0.3).astype(int)
    thresholds = {k: v for k, v in choose_thresholds(y, raw, NAMES).items() if v is not None}
    thresholds["Hernia"] = float(raw[7, 1])  # a threshold exactly at a score
    cal_a = prior_calibration(NAMES, [0.9, 0.99], [0.1, 0.01], "test")
    cal_b = {**cal_a, "method": "prior+temperature", "temperature": {"Effusion": 0.4, "Hernia": 7.0}}
    for old, new in ((None, cal_a), (cal_a, cal_b), (cal_b, none_calibration())):
        before = apply_calibration(raw, old, NAMES)
        after = apply_calibration(raw, new, NAMES)
        t_old = thresholds if old is None else map_thresholds(thresholds, None, old, NAMES)
        t_new = map_thresholds(t_old, old, new, NAMES)
        for c, name in enumerate(NAMES):
            assert np.array_equal(before[:, c] >= t_old[name], after[:, c] >= t_new[name]), (old, new, name)


def test_old_checkpoints_are_corrected_from_recorded_training_prevalence():
    assert resolve_calibration({}, {}, NAMES)["method"] == "none"
    cal = resolve_calibration({}, {"train_prevalence": {"Effusion": 0.1, "Hernia": 0.01}}, NAMES)
    assert cal["method"] == "prior"
    assert cal["log_prior_shift"]["Hernia"] == pytest.approx(np.log(0.99 / 0.01))
    weights = {"class_weights": {"w_pos": [0.9, 0.99], "w_neg": [0.1, 0.01]}}
    assert resolve_calibration(None, weights, NAMES)["log_prior_shift"] == cal["log_prior_shift"]
    stored = prior_calibration(NAMES, [0.5, 0.5], [0.5, 0.5], "stored")
    assert resolve_calibration(stored, {"train_prevalence": {}}, NAMES) == {
        **stored,
        "per_finding": {"Effusion": "prior", "Hernia": "prior"},
    }
    # a finding without training positives (w_neg = 0) gets a finite shift towards 0
    zero = prior_calibration(NAMES, [0.9, 1.0], [0.1, 0.0], "t")
    assert np.isfinite(zero["log_prior_shift"]["Hernia"]) and zero["fitted_on"]["untrained"] == ["Hernia"]


def test_the_method_is_recorded_per_finding_and_unfitted_findings_stay_scores():
    """An import (no prior) calibrated on a table labelling one finding: only that one is a probability."""
    from cxrdx.metrics.calibration import finding_methods

    rng = np.random.default_rng(8)
    raw = rng.random((400, 2))
    y = np.full((400, 2), np.nan)
    y[:, 0] = rng.random(400) < raw[:, 0]  # Effusion labelled; Hernia not at all
    cal = fit_calibration(y, raw, NAMES, None, {})
    assert cal["per_finding"] == {"Effusion": "prior+temperature", "Hernia": "none"}
    assert finding_methods(cal, NAMES) == cal["per_finding"]
    assert np.array_equal(apply_calibration(raw, cal, NAMES)[:, 1], raw[:, 1])  # Hernia: the raw score
    # nothing fitted at all: the record says none, not "prior+temperature"
    assert fit_calibration(np.full((400, 2), np.nan), raw, NAMES, None, {})["method"] == "none"
    # with a known prior an unfitted finding keeps the prior: still a probability
    base = prior_calibration(NAMES, [0.9, 0.99], [0.1, 0.01], "test")
    assert fit_calibration(y, raw, NAMES, base, {})["per_finding"] == {
        "Effusion": "prior+temperature",
        "Hernia": "prior",
    }


@pytest.mark.parametrize("prior", [False, True])
def test_one_minimum_of_positives_and_negatives_on_every_path(prior):
    """Platt (no prior) and temperature (known prior) both need MIN_PER_CLASS of each class: one positive
    no longer fits a shift (the old Platt path moved it by 5.95 from a single positive)."""
    from cxrdx.metrics.calibration import MIN_PER_CLASS

    rng = np.random.default_rng(9)
    raw = rng.random((300, 2))
    y = (rng.random((300, 2)) < raw).astype(float)
    y[:, 1] = 0
    y[: MIN_PER_CLASS - 1, 1] = 1  # one positive short of the minimum
    base = prior_calibration(NAMES, [0.9, 0.99], [0.1, 0.01], "test") if prior else None
    cal = fit_calibration(y, raw, NAMES, base, {})
    assert cal["temperature"]["Hernia"] == 1.0
    assert cal["log_prior_shift"]["Hernia"] == (base["log_prior_shift"]["Hernia"] if prior else 0.0)
    assert cal["per_finding"]["Hernia"] == ("prior" if prior else "none")
    assert cal["fitted_on"]["counts"]["Hernia"] == {
        "positives": MIN_PER_CLASS - 1,
        "negatives": 301 - MIN_PER_CLASS,
    }
    y[:MIN_PER_CLASS, 1] = 1  # at the minimum: fitted
    assert fit_calibration(y, raw, NAMES, base, {})["per_finding"]["Hernia"] == "prior+temperature"


def test_old_single_method_records_are_read_per_finding():
    """Checkpoints written before per_finding: the skipped findings read as prior (known prior) or none (Platt)."""
    from cxrdx.metrics.calibration import finding_methods

    shift, temp = {"Effusion": 0.3, "Hernia": 0.0}, {"Effusion": 1.7, "Hernia": 1.0}
    platt = {
        "method": "prior+temperature",
        "log_prior_shift": shift,
        "temperature": temp,
        "fitted_on": {"prior": "fitted with the temperature (Platt)", "temperature_kept_at_1": ["Hernia"]},
    }
    assert finding_methods(platt, NAMES) == {"Effusion": "prior+temperature", "Hernia": "none"}
    known = {**platt, "fitted_on": {"prior": "training class weights", "temperature_kept_at_1": ["Hernia"]}}
    assert finding_methods(known, NAMES) == {"Effusion": "prior+temperature", "Hernia": "prior"}
    assert finding_methods({**known, "method": "prior"}, NAMES) == {"Effusion": "prior", "Hernia": "prior"}
    assert finding_methods(None, NAMES) == {"Effusion": "none", "Hernia": "none"}
