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
    # a landscape film letterboxed: the rows of cells over the padding peak at the image's edge
    assert chance_hit_rate((128, 256), 128, [(0, 0, 128, 128)]) == 8 / 16
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


def _closed_form(shape, input_size, box) -> float:
    """The fraction of Grad-CAM cell centres (square image, no padding) inside the box."""
    cells = input_size // 32
    centres = (np.arange(cells) + 0.5) * shape[0] / cells
    x, y, w, h = box
    inside_x = (centres >= x) & (centres < x + w)
    inside_y = (centres >= y) & (centres < y + h)
    return float(inside_x.sum() * inside_y.sum()) / cells**2


def _simulated(shape, input_size, box, trials: int, seed: int = 0) -> float:
    """Random Grad-CAM grids whose maximum is a uniformly random cell, taken through the heatmaps' own path
    (bilinear upsampling, letterbox crop and normalisation, peak finding) and scored by the pointing game."""
    import torch
    import torch.nn.functional as F

    from cxrdx.explain.gradcam import normalize_map
    from cxrdx.explain.localisation import pointing_game
    from cxrdx.imaging.letterbox import letterbox

    rng = np.random.default_rng(seed)
    cells = input_size // 32
    lb = letterbox(np.zeros(shape, np.uint8), input_size)[1]
    hits = 0
    for _ in range(trials):
        grid = rng.uniform(0.0, 0.5, (cells, cells)).astype(np.float32)
        grid[rng.integers(cells), rng.integers(cells)] = 1.0
        up = F.interpolate(torch.from_numpy(grid)[None, None], size=(input_size, input_size), mode="bilinear")
        heatmap = normalize_map(lb.unletterbox(normalize_map(up[0, 0].numpy())))
        hits += pointing_game(heatmap, [box])
    return hits / trials


def test_chance_rate_of_an_interior_box_is_the_share_of_cell_centres_inside_it():
    """Away from the border (edges half a cell from any centre) a cell's heatmap peaks at its centre."""
    assert chance_hit_rate((256, 256), 128, [(70, 70, 60, 100)]) == _closed_form(
        (256, 256), 128, (70, 70, 60, 100)
    )
    for box in [(96, 128, 224, 160), (64, 320, 64, 128), (192, 192, 32, 32)]:  # 16 x 16 cells at 512 px
        expected = _closed_form((512, 512), 512, box)
        assert expected > 0 and chance_hit_rate((512, 512), 512, [box]) == expected


def test_chance_rate_of_a_border_box_matches_a_simulation_through_the_heatmap_path():
    """A strip along the top holds no cell centre (the old baseline said 0.000), but a top-row cell's
    heatmap peaks on the plateau between the border and its centre, inside the strip: 1 time in 4."""
    strip = (0, 0, 128, 12)
    chance = chance_hit_rate((128, 128), 128, [strip])
    assert chance == 0.25
    assert abs(_simulated((128, 128), 128, strip, trials=400) - chance) < 0.07
    # letterboxed (a portrait film): the strip along the image's own left edge, next to the padding, is
    # hit by the cells over the padding on that side
    assert (
        abs(
            _simulated((128, 64), 128, (0, 0, 8, 128), 400, 1)
            - chance_hit_rate((128, 64), 128, [(0, 0, 8, 128)])
        )
        < 0.07
    )
