"""The "jet" colour map as a numpy lookup table, so overlays are coloured without importing matplotlib.

The breakpoints are matplotlib's ``_jet_data`` (each channel piecewise linear in the value); the
table has matplotlib's 256 entries and is indexed the way a matplotlib colour map indexes a float
in [0, 1] (``int(x * 256)``, 1.0 in the last entry), so ``jet(x)`` equals ``matplotlib.cm.jet(x)``
(tests/explain/test_colormap.py).
"""

from __future__ import annotations

from functools import cache

import numpy as np

JET_SEGMENTS = {  # (value, channel intensity) breakpoints per channel
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
LUT_SIZE = 256


@cache
def jet_lut() -> np.ndarray:
    """(256, 3) float32 RGB in [0, 1]: entry i is jet at i / 255."""
    x = np.linspace(0.0, 1.0, LUT_SIZE)
    channels = [np.interp(x, *zip(*JET_SEGMENTS[c], strict=True)) for c in ("red", "green", "blue")]
    lut = np.stack(channels, axis=1).astype(np.float32)
    lut.flags.writeable = False
    return lut


def lut_index(values: np.ndarray) -> np.ndarray:
    """The table entry of each value in [0, 1] (clipped; NaN as 0), as a matplotlib colour map picks it."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0), 0.0, 1.0)
    idx = (v * LUT_SIZE).astype(np.int32)  # truncation, as matplotlib's Colormap.__call__
    return np.minimum(idx, LUT_SIZE - 1, out=idx)


def jet(values: np.ndarray) -> np.ndarray:
    """RGB float32 in [0, 1] for values in [0, 1] (any shape; one more axis of 3)."""
    return jet_lut()[lut_index(values)]
