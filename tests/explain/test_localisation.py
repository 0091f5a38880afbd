"""LocalisationScore: strict and half-cell pointing games are different numbers, each beside its chance rate."""

from __future__ import annotations

import numpy as np

from cxrdx.explain.localisation import (
    LocalisationScore,
    chance_hit_rate,
    format_localisation,
    half_cell_tolerance,
)


def test_score_counts_strict_and_half_cell_hits_separately():
    heatmap = np.zeros((256, 256), np.float32)
    heatmap[100, 100] = 1.0
    tolerance = half_cell_tolerance(heatmap.shape, 128)  # 256 px shown at 128 px: half a cell = 32 px
    assert tolerance == 32
    score = LocalisationScore("Nodule")
    score.add("near.png", heatmap, [(120, 95, 20, 10)], 0.5, 128, tolerance)  # 20 px right of the peak
    score.add("far.png", heatmap, [(140, 95, 20, 10)], 0.5, 128, tolerance)  # 40 px right: beyond half a cell
    score.add("in.png", heatmap, [(95, 95, 10, 10)], 0.5, 128, tolerance)
    assert score.n == 3
    assert score.pointing_game == 1 / 3
    assert score.pointing_game_cell == 2 / 3
    assert [p["cell_hit"] for p in score.pairs] == [True, False, True]
    assert [p["hit"] for p in score.pairs] == [False, False, True]


def test_chance_rate_counts_the_cells_a_random_peak_could_hit():
    # 128 px input: a 4 x 4 grid; cell centres of a 256 px square source at 32, 96, 160, 224 px
    assert chance_hit_rate((256, 256), 128, [(0, 0, 256, 256)]) == 1.0
    assert chance_hit_rate((256, 256), 128, [(0, 0, 128, 128)]) == 4 / 16  # a quarter of the film
    assert chance_hit_rate((256, 256), 128, [(40, 40, 20, 20)]) == 0.0  # between centres
    assert chance_hit_rate((256, 256), 128, [(40, 40, 20, 20)], tolerance=32) == 1 / 16
    # a landscape film letterboxed: only the 2 rows of cells over the image count (4 x 2 = 8 cells)
    assert chance_hit_rate((128, 256), 128, [(0, 0, 128, 128)]) == 4 / 8
    assert chance_hit_rate((256, 256), 128, [(0, 0, 64, 256), (192, 0, 64, 256)]) == 8 / 16  # union of boxes


def test_the_table_prints_chance_beside_each_pointing_figure():
    heatmap = np.zeros((256, 256), np.float32)
    heatmap[30, 30] = 1.0
    score = LocalisationScore("Effusion")
    score.add("big.png", heatmap, [(0, 0, 140, 140)], 0.5, 128, 32)
    assert score.pointing_game == 1.0 and score.chance == 0.25
    assert score.summary()["chance"] == 0.25 and score.summary()["chance_half_cell"] == 9 / 16
    row = next(
        line for line in format_localisation({"Effusion": score}).splitlines() if line.startswith("Effusion")
    )
    assert row.split()[1:] == ["1", "1.000", "0.250", "1.000", "0.562", "0.000"]
