"""Reduced-scale JPEG decode (cxrdx.imaging.jpeg): when it applies, and how close it stays to the exact decode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrdx.imaging.jpeg import DecodeTarget, common_target
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.imaging.read import read_image
from cxrdx.phantom.render import make_phantom


@pytest.mark.parametrize(
    ("target", "width", "height", "scale"),
    [
        # the rule, by hand: the largest s of 4, 2 with (side // s) >= 8 x the side's demand
        (DecodeTarget(longer=64), 2500, 2048, 4),  # 625 >= 512
        (DecodeTarget(longer=128), 2500, 2048, 2),  # 625 < 1024 <= 1250
        (DecodeTarget(longer=320), 2500, 2048, 1),  # 1250 < 2560: decoded in full
        (DecodeTarget(longer=128), 1024, 1024, 1),  # 512 < 1024
        (DecodeTarget(shorter=64), 2500, 2048, 4),  # the shorter side 2048 // 4 = 512 >= 512
        (DecodeTarget(shorter=64), 2048, 2500, 4),  # portrait: the same
        (DecodeTarget(shorter=128), 2500, 2000, 1),  # 1000 < 1024
        (DecodeTarget(longer=64, shorter=64), 2500, 1500, 2),  # 1500 // 4 = 375 < 512 <= 750
    ],
)
def test_scale_rule(target, width, height, scale):
    assert target.scale(width, height) == scale


def test_only_our_antialiased_recipe_reads_reduced():
    assert Preprocessing(size=64).decode_target == DecodeTarget(longer=64)
    assert Preprocessing(size=64, fit="center_crop").decode_target == DecodeTarget(shorter=64)
    assert Preprocessing(size=64, fit="stretch").decode_target == DecodeTarget(shorter=64)
    crop = Preprocessing(size=224, fit="resize_crop", resize_to=256)
    assert crop.decode_target == DecodeTarget(shorter=256)
    # publishers' pipelines (torchxrayvision, CheXNet, Keras) decode the whole file
    assert Preprocessing(size=224, fit="center_crop", resize="skimage", bits=None).decode_target is None
    assert Preprocessing(size=224, fit="resize_crop", resize="pil8", resize_to=256).decode_target is None
    assert Preprocessing(size=224, fit="stretch", resize="nearest").decode_target is None
    # one decode for several recipes: the most demanding, or exact if any needs it
    assert common_target([DecodeTarget(longer=64), DecodeTarget(shorter=32)]) == DecodeTarget(64, 32)
    assert common_target([DecodeTarget(longer=64), None]) is None
    assert common_target([]) is None


@pytest.fixture(scope="module")
def phantom_jpeg(tmp_path_factory):
    film, _ = make_phantom(np.random.default_rng(3), 1024, ["Effusion", "Nodule", "Cardiomegaly"])
    path = tmp_path_factory.mktemp("jpeg") / "film.jpg"
    Image.fromarray(film, mode="L").save(path, quality=95)
    return path


def test_reduced_decode_stays_within_the_measured_tolerance(phantom_jpeg):
    """At 64 px a 1,024 px film decodes at 1/2 (512 >= 8 x 64). benchmarks/jpeg_decode.py measured, on 48
    real NIH films as JPEG (quality 95) at this 8x ratio, squares within 1 level (mean 0.031 levels) and
    the trained demo model's outputs within 0.006 of the exact decode's: the squares must do as well."""
    prep = Preprocessing(size=64)
    exact, exact_meta = read_image(phantom_jpeg, uint8_ok=True)
    reduced, meta = read_image(phantom_jpeg, uint8_ok=True, target=prep.decode_target)
    assert (exact_meta.decode_scale, exact.shape) == (1, (1024, 1024))
    assert (meta.decode_scale, reduced.shape, reduced.dtype) == (2, (512, 512), np.uint8)
    delta = np.abs(prep.square(exact)[0].astype(int) - prep.square(reduced)[0].astype(int))
    assert delta.max() <= 1
    assert delta.mean() <= 0.05
    # the reduced picture is the film's 2x2 means up to the DCT's band limit (not shifted or flipped)
    means = exact.astype(np.float64).reshape(512, 2, 512, 2).mean(axis=(1, 3))
    assert np.abs(means - reduced).mean() < 1.0


def test_no_target_or_no_jpeg_decodes_in_full(phantom_jpeg, tmp_path):
    big = Preprocessing(size=320).decode_target  # 1024 < 8 x 320 x 2: nothing to gain
    full, meta = read_image(phantom_jpeg, target=big)
    assert meta.decode_scale == 1
    np.testing.assert_array_equal(full, read_image(phantom_jpeg)[0])
    png = tmp_path / "film.png"
    Image.open(phantom_jpeg).save(png)
    image, meta = read_image(png, target=DecodeTarget(longer=32))
    assert (meta.decode_scale, image.shape) == (1, (1024, 1024))


def test_predict_and_prepare_read_reduced_explain_reads_in_full(phantom_jpeg, tmp_path):
    """The network-input paths pass the recipe's target (a 32 px network: 1,024 px decodes at 1/4,
    256 >= 8 x 32); ``Predictor.read``, which explain and the overlays use, keeps the film's own grid."""
    from testkit import tiny_checkpoint

    from cxrdx.data.loaders import load_square, to_square_uint8
    from cxrdx.inference.predictor import Predictor

    prep = Preprocessing(size=32)
    reduced, meta = read_image(phantom_jpeg, uint8_ok=True, target=prep.decode_target)
    assert meta.decode_scale == 4
    np.testing.assert_array_equal(load_square(str(phantom_jpeg), 32), to_square_uint8(reduced, 32))
    predictor = Predictor.load(tiny_checkpoint(tmp_path / "t.safetensors", size=32), backend="torch")
    from_file = predictor.predict([phantom_jpeg], workers=0)[0].probabilities
    from_array = predictor.predict([reduced], workers=0)[0].probabilities
    assert from_file == from_array
    assert predictor.read(phantom_jpeg)[0].shape == (1024, 1024)
