"""The overlay's numpy "jet" table against matplotlib's own colour map (the reference it restates)."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

from cxrdx.explain.colormap import jet, jet_lut


def test_jet_lut_is_matplotlibs_jet():
    reference = colormaps["jet"](np.arange(256))[:, :3]  # integer input: the table's entries
    np.testing.assert_allclose(jet_lut(), reference, atol=1e-6)


def test_jet_picks_entries_as_matplotlib_does():
    x = np.concatenate([np.linspace(0.0, 1.0, 20001), [-0.5, 1.5, 1 / 256, 255 / 256, 0.9999999]])
    x = x.astype(np.float32)
    np.testing.assert_allclose(jet(x), colormaps["jet"](x)[:, :3], atol=1e-6)
    grid = np.random.default_rng(0).random((7, 9), dtype=np.float32)
    assert jet(grid).shape == (7, 9, 3)
    np.testing.assert_allclose(jet(grid), colormaps["jet"](grid)[..., :3], atol=1e-6)
