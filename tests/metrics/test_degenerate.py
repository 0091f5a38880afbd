"""Degenerate results are flagged: a temperature at its bound, a threshold of nearly all false positives, an
AUROC CI containing 0.5, a pointing game below its chance rate (the cases found in review), and only those."""

from __future__ import annotations

from cxrdx.metrics.calibration import TEMPERATURE_RANGE
from cxrdx.metrics.degenerate import (
    below_chance,
    ci_contains_chance,
    class_flags,
    mostly_false_positives,
    temperature_at_bound,
)

NAMES = ["Pleural_Thickening", "Effusion", "Hernia"]


def _calibration(temps: dict, per: dict | None = None) -> dict:
    return {
        "method": "prior+temperature",
        "log_prior_shift": dict.fromkeys(temps, 0.0),
        "temperature": temps,
        "per_finding": per or dict.fromkeys(temps, "prior+temperature"),
        "fitted_on": {},
    }


def test_a_temperature_at_either_bound_is_flagged_and_an_interior_one_is_not():
    lo, hi = TEMPERATURE_RANGE
    cal = _calibration({"Pleural_Thickening": 20.000, "Effusion": 1.3, "Hernia": lo * 1.0004})
    flags = temperature_at_bound(cal, NAMES)
    assert set(flags) == {"Pleural_Thickening", "Hernia"} and "T = 20.000" in flags["Pleural_Thickening"]
    assert hi == 20.0
    # a finding that was not fitted (temperature 1, "prior") is not a fit at a bound
    assert temperature_at_bound(_calibration({"Effusion": 1.0}, {"Effusion": "prior"}), ["Effusion"]) == {}
    assert temperature_at_bound(None, NAMES) == {}


def test_calls_that_are_nearly_all_false_positives_are_flagged():
    assert "5 TP against 133 FP" in mostly_false_positives({"tp": 5, "fp": 133, "fn": 1, "tn": 900})
    assert mostly_false_positives({"tp": 30, "fp": 100}) is None  # PPV 0.23: poor, not degenerate
    assert mostly_false_positives({"tp": 0, "fp": 4}) is None  # too few calls to judge
    assert mostly_false_positives(None) is None


def test_an_auroc_ci_containing_one_half_and_a_pointing_game_below_chance_are_flagged():
    assert "contains 0.5" in ci_contains_chance([0.41, 0.62])
    assert ci_contains_chance([0.55, 0.71]) is None and ci_contains_chance([None, None]) is None
    assert "0.012 is below its chance rate 0.138" in below_chance(0.012, 0.138)
    assert below_chance(0.3, 0.138) is None and below_chance(None, 0.1) is None


def test_class_flags_collects_every_reason_per_finding():
    classes = {
        "Pleural_Thickening": {"auroc_ci": [0.7, 0.8], "at_threshold": {"tp": 5, "fp": 133}},
        "Effusion": {"auroc_ci": [0.8, 0.9], "at_threshold": {"tp": 50, "fp": 20}},
        "Hernia": {"auroc_ci": [0.3, 0.9]},
    }
    flags = class_flags(classes, _calibration({"Pleural_Thickening": 20.0, "Effusion": 1.1, "Hernia": 1.0}))
    assert set(flags) == {"Pleural_Thickening", "Hernia"}
    assert len(flags["Pleural_Thickening"]) == 2  # the temperature and the false positives
