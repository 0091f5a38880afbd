"""The recipe's parts: the skimage-equivalent resize against scikit-image itself, the fits' geometry, old
records fed exactly as before, and our own models' training and inference inputs identical to the bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrdx.imaging.fit import fit_square
from cxrdx.imaging.letterbox import letterbox
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.imaging.read import read_image
from cxrdx.imaging.resize import skimage_resize


def nih_films(shared_data: Path, n: int) -> list[Path]:
    return sorted((shared_data / "nih" / "images").glob("*.png"))[:n]


@pytest.mark.parametrize(
    ("crop", "shape"),
    [((0, 1024, 0, 1024), (224, 224)), ((100, 900, 37, 1000), (224, 224)), ((0, 700, 0, 1024), (320, 150)),
     ((200, 240, 300, 333), (224, 224)), ((0, 1024, 0, 1024), (1024, 1024)), ((10, 300, 0, 1024), (400, 100))],
)  # fmt: skip
def test_skimage_resize_equals_scikit_image(shared_data, crop, shape):
    """As torchxrayvision calls it: on [-1024, 1024] float32, mode constant (cval 0), preserve_range;
    ours runs on [0, 1] with the edge value that normalises to 0. Shrinking, growing, both at once."""
    sk = pytest.importorskip("skimage.transform", reason="scikit-image is the reference (dev extra)")
    y0, y1, x0, x1 = crop
    for path in nih_films(shared_data, 2):
        gray = np.asarray(Image.open(path).convert("L"), dtype=np.float32)[y0:y1, x0:x1] / 255
        xrv = (2 * gray - 1) * 1024
        ref = sk.resize(xrv[None], (1, *shape), mode="constant", preserve_range=True).astype(np.float32)[0]
        ours = (2 * skimage_resize(gray, *shape, cval=0.5) - 1) * 1024
        assert np.abs(ours - ref).max() <= 2e-3  # of a 2048 range: float32 rounding only
        if shape[0] < gray.shape[0]:  # and it is not the plain bilinear resize (that would be ~1e1 off)
            plain = sk.resize(xrv, shape, mode="constant", preserve_range=True, anti_aliasing=False)
            assert np.abs(plain - ref).max() > 10


def test_skimage_resize_keeps_cval_outside_the_range_as_scikit_image():
    sk = pytest.importorskip("skimage.transform")
    img = np.random.default_rng(0).uniform(0.6, 0.9, (50, 40)).astype(np.float32)
    ref = sk.resize(img, (90, 30), mode="constant", cval=0.2, preserve_range=True).astype(np.float32)
    np.testing.assert_allclose(skimage_resize(img, 90, 30, cval=0.2), ref, atol=1e-6)


def test_fits_geometry_and_heatmaps_map_back():
    img = np.random.default_rng(1).random((300, 200)).astype(np.float32)
    (sq,), box = fit_square(img, "center_crop", 64, "pil")
    assert sq.shape == (64, 64) and box.top < 0 and box.left == 0  # the centred 200 x 200, resized
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[:, :] = 1.0
    back = box.unletterbox(heat)
    assert back.shape == (300, 200)
    assert back[150, 100] == pytest.approx(1.0) and back[5, 100] == pytest.approx(0.0)  # rows never seen: 0
    views, box = fit_square(img, "resize_crop", 64, "pil", resize_to=73, crops=10)
    assert len(views) == 10 and all(v.shape == (64, 64) for v in views)
    np.testing.assert_array_equal(views[5], views[5][:, ::-1][:, ::-1])
    (st,), box = fit_square(img, "stretch", 64, "nearest")
    assert st.shape == (64, 64) and box.unletterbox(np.ones((64, 64), np.float32)).shape == (300, 200)


def test_a_record_older_than_the_recipe_is_fed_exactly_as_before(shared_data):
    """No ``fit`` key: the letterbox of before, 8-bit files in Pillow's 8-bit mode, unrounded floats."""
    old = Preprocessing.from_dict({"size": 224, "channels": 1, "pixel_range": [-1024, 1024], "mean": [0.0],
                                   "std": [1.0]})  # fmt: skip
    for path in nih_films(shared_data, 2):
        for uint8_ok in (True, False):
            image, _ = read_image(path, uint8_ok=uint8_ok)
            before = letterbox(image, 224)[0]
            square, _ = old.square(image)
            assert square.dtype == before.dtype
            np.testing.assert_array_equal(square, before)


@pytest.fixture
def dicoms(shared_data) -> list[Path]:
    return sorted((shared_data / "dicom").glob("*.dcm"))


def test_our_training_and_inference_inputs_are_identical_to_the_bit(shared_data, dicoms, tmp_path):
    """``cxrdx prepare``'s worker stores a square; training normalises it on the device; ``Predictor``
    reads the same file its own way (8-bit files as uint8) and must hand the network the same bits."""
    import torch

    from cxrdx.data.prepare import _decode_row
    from cxrdx.inference.predictor import Predictor
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model
    from cxrdx.training.data import to_input

    size = 96
    pre = Preprocessing(size=size, channels=3, pixel_range=(0.0, 1.0), mean=(0.49,), std=(0.24,))  # as train
    ckpt = tmp_path / "ours.safetensors"
    save_checkpoint(
        ckpt, build_model("densenet-tiny"), CheckpointMeta(architecture="densenet-tiny", preprocessing=pre)
    )
    predictor = Predictor.load(ckpt, backend="torch")
    films = nih_films(shared_data, 6) + sorted(shared_data.glob("nih/images/00000100_000.png")) + dicoms
    assert any(p.suffix == ".dcm" for p in films)
    for path in films:
        _, cached, problem = _decode_row((0, str(path), size))
        assert problem is None
        trained = to_input(torch.from_numpy(cached[None]), pre, torch.device("cpu"), torch.contiguous_format,
                           None, None, train=False)[0].numpy()  # fmt: skip
        fed, _, error = predictor._load_one(str(path), str(path))
        assert error is None
        assert fed.dtype == np.float32 and fed.shape == trained.shape
        assert np.array_equal(fed, trained), f"{path.name}: {np.abs(fed - trained).max()}"
    # a non-square film (a real one, cropped) and a 16-bit one go through the same function too
    film = np.asarray(Image.open(films[0]).convert("L"))
    sixteen = film.astype(np.uint16) * 256 + np.random.default_rng(0).integers(
        0, 256, film.shape, dtype=np.uint16
    )
    for variant in (film[:, 100:900], sixteen):
        path = tmp_path / f"v{variant.dtype}.png"
        Image.fromarray(np.ascontiguousarray(variant)).save(path)
        assert read_image(path)[1].bit_depth == variant.itemsize * 8
        _, cached, _ = _decode_row((0, str(path), size))
        fed = predictor._load_one(str(path), str(path))[0]
        trained = pre.to_input(torch.from_numpy(cached[None]))[0].numpy()
        assert np.array_equal(fed, trained)
