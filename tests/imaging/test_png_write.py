"""`write_png`: files Pillow (an independent decoder) reads back to the same pixels, every CRC right."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrdx.imaging.png import check_png_chunks
from cxrdx.imaging.png_write import write_png


@pytest.mark.parametrize("shape", [(37, 53, 3), (64, 20), (1, 1, 3), (5, 1)])
def test_write_png_round_trips_through_pillow(tmp_path, shape):
    picture = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "p.png"
    write_png(path, picture)
    check_png_chunks(path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == ("RGB" if len(shape) == 3 else "L")
        np.testing.assert_array_equal(np.asarray(im), picture)


def test_write_png_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "p.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "p.png", np.zeros((4, 4, 4), np.uint8))
