import numpy as np
import pytest

from cxrdx.errors import ConfigError
from cxrdx.imaging.letterbox import letterbox
from cxrdx.imaging.preprocessing import Preprocessing


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
    pre = Preprocessing(
        size=32, channels=3, pixel_range=(0, 1), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    x = pre.to_input(np.full((2, 32, 32), 0.5, dtype=np.float32))
    assert x.shape == (2, 3, 32, 32)
    assert np.allclose(
        x[0, :, 0, 0], (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    )


def test_uint8_and_float_inputs_agree_and_range_mapping():
    pre = Preprocessing(size=32, channels=1, pixel_range=(-1024, 1024), mean=(0,), std=(1,))
    u8 = np.full((1, 32, 32), 255, dtype=np.uint8)
    assert np.allclose(pre.to_input(u8), 1024)
    assert np.allclose(pre.to_input(u8.astype(np.float32) / 255), 1024)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=16),
        dict(channels=2),
        dict(std=(0.0,)),
        dict(channels=3, mean=(1.0, 2.0)),
        dict(resize="crop"),
    ],
)
def test_bad_preprocessing_is_refused(kwargs):
    with pytest.raises(ConfigError):
        Preprocessing.from_dict(
            kwargs
        )  # the constructor has no resize field; old records still go through from_dict


def test_call_returns_network_input():
    pre = Preprocessing(size=48)
    x, box = pre(np.random.default_rng(0).random((60, 80), dtype=np.float32))
    assert x.shape == (3, 48, 48) and x.dtype == np.float32
    assert box.src_height == 60 and box.src_width == 80


def test_bad_preprocessing_is_refused_by_the_constructor():
    with pytest.raises(ConfigError):
        Preprocessing(size=16)
    with pytest.raises(ConfigError):
        Preprocessing(resize="letterbox")  # the old one-value field's value is no resize kernel
    with pytest.raises(ConfigError):
        Preprocessing(fit="center_crop", crops=10)  # ten-crop needs a shorter-side resize first


def test_old_records_with_retired_keys_still_load():
    old = {"size": 64, "channels": 1, "pixel_range": [-1024, 1024], "mean": [0.0], "std": [1.0]}
    pre = Preprocessing.from_dict({**old, "resize": "letterbox", "extra": {"source": "xrv"}})
    assert pre == Preprocessing.from_dict(old)
    # a record older than the recipe is fed as it always was: letterbox, no rounding, "legacy" resize
    assert (pre.fit, pre.resize, pre.bits, pre.crops) == ("letterbox", "legacy", None, 1)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    with pytest.raises(ConfigError):
        Preprocessing.from_dict({**old, "resize": "crop"})


@pytest.mark.parametrize("channels", [1, 3])
def test_to_input_torch_matches_numpy(channels):
    torch = pytest.importorskip("torch")
    mean = (0.485, 0.456, 0.406)[:channels] if channels == 3 else (0.5,)
    pre = Preprocessing(size=32, channels=channels, pixel_range=(-1024, 1024), mean=mean, std=(0.25,))
    u8 = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    ref = pre.to_input(u8)
    assert ref.shape == (2, channels, 32, 32) and ref.dtype == np.float32
    for x in (torch.from_numpy(u8), torch.from_numpy(u8).unsqueeze(1).float() / 255):
        out = pre.to_input(x)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        np.testing.assert_array_equal(out.numpy(), ref)
    np.testing.assert_array_equal(pre.to_input(u8[:, None].astype(np.float32) / 255), ref)
    with pytest.raises(ValueError, match="gray"):
        pre.to_input(np.zeros((2, 3, 32, 32), np.float32))
