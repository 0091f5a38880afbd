import numpy as np
import pytest

from cxrdx.errors import ConfigError
from cxrdx.preprocess import Preprocessing, letterbox


def test_letterbox_pads_shorter_side_and_maps_back():
    image = np.zeros((100, 50), dtype=np.float32)
    image[40:60, 10:20] = 1.0
    square, box = letterbox(image, 64)
    assert square.shape == (64, 64)
    assert (box.height, box.width) == (64, 32) and box.left == 16 and box.top == 0
    assert square[:, :16].max() == 0 and square[:, 48:].max() == 0  # padding is black
    back = box.unletterbox(square)
    assert back.shape == image.shape
    assert np.corrcoef(back.ravel(), image.ravel())[0, 1] > 0.9


def test_normalize_formula_per_channel():
    pre = Preprocessing(size=32, channels=3, pixel_range=(0, 1), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = pre.normalize(np.full((2, 32, 32), 0.5, dtype=np.float32))
    assert x.shape == (2, 3, 32, 32)
    assert np.allclose(x[0, :, 0, 0], (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))


def test_uint8_and_float_inputs_agree_and_range_mapping():
    pre = Preprocessing(size=32, channels=1, pixel_range=(-1024, 1024), mean=(0,), std=(1,))
    u8 = np.full((1, 32, 32), 255, dtype=np.uint8)
    assert np.allclose(pre.normalize(u8), 1024)
    assert np.allclose(pre.normalize(u8.astype(np.float32) / 255), 1024)


@pytest.mark.parametrize(
    "kwargs", [dict(size=16), dict(channels=2), dict(std=(0.0,)), dict(channels=3, mean=(1.0, 2.0)), dict(resize="crop")]
)
def test_bad_preprocessing_is_refused(kwargs):
    with pytest.raises(ConfigError):
        Preprocessing(**kwargs)


def test_call_returns_network_input():
    pre = Preprocessing(size=48)
    x, box = pre(np.random.default_rng(0).random((60, 80), dtype=np.float32))
    assert x.shape == (3, 48, 48) and x.dtype == np.float32
    assert box.src_height == 60 and box.src_width == 80
