"""LocalisationScore: the strict and half-cell pointing games are different numbers."""

from __future__ import annotations

import numpy as np

from cxrdx.explain.localisation import LocalisationScore, half_cell_tolerance


def test_score_counts_strict_and_half_cell_hits_separately():
    heatmap = np.zeros((256, 256), np.float32)
    heatmap[100, 100] = 1.0
    tolerance = half_cell_tolerance(heatmap.shape, 128)  # 256 px shown at 128 px: half a cell = 32 px
    assert tolerance == 32
    score = LocalisationScore("Nodule")
    score.add("near.png", heatmap, [(120, 95, 20, 10)], 0.5, tolerance)  # 20 px right of the peak
    score.add("far.png", heatmap, [(140, 95, 20, 10)], 0.5, tolerance)  # 40 px right: beyond half a cell
    score.add("in.png", heatmap, [(95, 95, 10, 10)], 0.5, tolerance)
    assert score.n == 3
    assert score.pointing_game == 1 / 3
    assert score.pointing_game_cell == 2 / 3
    assert [p["cell_hit"] for p in score.pairs] == [True, False, True]
    assert [p["hit"] for p in score.pairs] == [False, False, True]
