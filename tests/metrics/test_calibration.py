"""Expected calibration error."""

from __future__ import annotations

import numpy as np

from cxrdx.metrics.calibration import expected_calibration_error


def test_ece_zero_when_calibrated_and_positive_when_not():
    rng = np.random.default_rng(9)
    p = rng.random(200_000)
    y = (rng.random(200_000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, p**3) > 0.1
    assert expected_calibration_error(np.array([1, 0, 1, 0]), np.array([1.0, 0.0, 1.0, 0.0])) == 0.0
