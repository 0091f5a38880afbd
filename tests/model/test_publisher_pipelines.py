"""An imported model gives its publisher's numbers: each publisher's test-time pipeline, re-stated here
from its own code, against ``Predictor.predict`` on real films (square and not, 8- and 16-bit).

- torchxrayvision (mlmed/torchxrayvision, README and ``datasets.py``): ``normalize(img, maxval)``
  = (2 * img / maxval - 1) * 1024 in float32, ``XRayCenterCrop`` (start = n // 2 - side // 2),
  ``XRayResizer(224)`` = ``skimage.transform.resize(img, (1, 224, 224), mode="constant",
  preserve_range=True)``, the model on (1, 1, 224, 224), sigmoid; calls at ``op_threshs``.
- CheXNet (arnoweng/CheXNet ``model.py``): ``Image.open(...).convert("RGB")``, ``Resize(256)``,
  ``TenCrop(224)``, ``ToTensor``, ImageNet ``Normalize``, the ten sigmoid outputs averaged. torchvision
  does not import here, so its transforms are written out with Pillow (torchvision's own steps on a PIL
  image: shorter side to 256, the longer to int(256 * long / short), bilinear; crops with its rounding).

The reference networks are ``tv_forward`` (tests/model/test_importers.py): a functional DenseNet in
torchvision's key names that reads the source tensors, not our network.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_importers import TINY, make_tv_state, tv_forward, write_chexnet
from testkit import keras_seed_model

from cxrdx.inference.predictor import Predictor
from cxrdx.model.import_weights import import_weights
from cxrdx.model.importers.chexnet import CHEXNET_LABELS
from cxrdx.model.importers.torchvision import IMAGENET_MEAN, IMAGENET_STD
from cxrdx.model.importers.xrv import XRV_PATHOLOGIES

TOL = 1e-3  # the target per probability
N_FILMS = 3


@pytest.fixture(scope="module")
def films(shared_data, tmp_path_factory) -> dict[str, list[Path]]:
    return real_films(shared_data, tmp_path_factory.mktemp("films"))


def real_films(shared_data: Path, tmp_path: Path, n: int = N_FILMS) -> dict[str, list[Path]]:
    """Real NIH films as the publisher would get them: 8-bit square, 8-bit cropped to non-square (tall and
    wide), and the same as real 16-bit films (v * 256 plus a random low byte: not an 8-bit film in disguise,
    which the reader would read back as 8 bits)."""
    src = sorted((shared_data / "nih" / "images").glob("*.png"))
    films = [np.asarray(Image.open(p)) for p in src]
    gray = [f for f in films if f.ndim == 2 and f.dtype == np.uint8][:n]
    out: dict[str, list[Path]] = {k: [] for k in ("square8", "tall8", "wide8", "square16", "wide16")}
    for i, f in enumerate(gray):
        crops = {"square8": f, "tall8": f[:, 130 + 7 * i : 900], "wide8": f[91 + 5 * i : 860, :]}
        crops |= {"square16": to16(f, i), "wide16": to16(crops["wide8"], i)}
        for kind, a in crops.items():
            path = tmp_path / f"{kind}_{i}.png"
            Image.fromarray(np.ascontiguousarray(a)).save(path)
            out[kind].append(path)
    return out


def to16(film: np.ndarray, seed: int) -> np.ndarray:
    low = np.random.default_rng(seed).integers(0, 256, film.shape, dtype=np.uint16)
    return film.astype(np.uint16) * 256 + low


def probs_by_name(predictions: list, names: list[str]) -> np.ndarray:
    assert all(p.error is None for p in predictions), [p.error for p in predictions]
    return np.array([[p.probabilities[n] for n in names] for p in predictions])


# ----------------------------------------------------------------------------- torchxrayvision


def xrv_reference(path: Path, sd: dict) -> np.ndarray:
    """torchxrayvision's documented pipeline on one file -> its 18 sigmoid outputs."""
    from skimage.transform import resize

    img = np.asarray(Image.open(path))  # what skimage.io.imread gives for a gray PNG
    maxval = 65535 if img.dtype == np.uint16 else 255
    img = (2 * (img.astype(np.float32) / maxval) - 1.0) * 1024  # xrv.datasets.normalize(img, maxval)
    img = img[None, ...]
    _, y, x = img.shape  # XRayCenterCrop
    side = min(y, x)
    sx, sy = x // 2 - side // 2, y // 2 - side // 2
    img = img[:, sy : sy + side, sx : sx + side]
    img = resize(img, (1, 224, 224), mode="constant", preserve_range=True).astype(np.float32)  # XRayResizer
    with torch.no_grad():
        logits = tv_forward(sd, torch.from_numpy(img)[None], TINY["blocks"])[0]
    return torch.sigmoid(logits).numpy()[0]


@pytest.fixture(scope="module")
def xrv_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xrv")
    sd = make_tv_state(TINY, 1, 18, seed=21)
    state = OrderedDict(sd)
    op = torch.linspace(0.2, 0.8, 18)  # operating points inside this random network's outputs
    state["op_threshs"] = op
    src = (
        tmp
        / "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    )
    torch.save(state, src)
    ckpt = import_weights("xrv", src, tmp / "xrv.safetensors").out
    return sd, op.numpy(), ckpt


@pytest.mark.parametrize("kind", ["square8", "tall8", "wide8", "square16", "wide16"])
def test_xrv_matches_torchxrayvision_pipeline_on_real_films(films, xrv_model, kind):
    pytest.importorskip("skimage", reason="scikit-image is the reference resize (dev extra)")
    sd, op, ckpt = xrv_model
    paths = films[kind]
    ref = None
    for backend in ("torch", "onnx"):  # the ONNX graph has the normalisation folded into conv0
        predictor = Predictor.load(ckpt, backend=backend)
        names = predictor.labels
        cols = [XRV_PATHOLOGIES.index(n) for n in names]
        predictions = predictor.predict(paths, workers=0)
        ours = probs_by_name(predictions, names)
        if ref is None:
            ref = np.stack([xrv_reference(p, sd) for p in paths])[:, cols]
            assert ref.std() > 0.02, "reference outputs are saturated: the comparison would prove nothing"
        np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0, err_msg=backend)
        # the same calls at xrv's operating points (positive when the probability reaches op_threshs)
        thresholds = np.array([predictor.thresholds[n] for n in names])
        np.testing.assert_allclose(thresholds, op[cols], rtol=1e-6)
        calls = np.array([[p.positive[n] for n in names] for p in predictions])
        assert np.array_equal(calls, ref >= op[cols]), backend


def test_xrv_recipe_is_recorded_and_old_imports_keep_the_letterbox(xrv_model):
    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import read_checkpoint_meta

    pre = read_checkpoint_meta(xrv_model[2]).preprocessing
    assert (pre.fit, pre.resize, pre.bits, pre.size, pre.channels) == ("center_crop", "skimage", None, 224, 1)
    old = Preprocessing.from_dict({"size": 224, "channels": 1, "pixel_range": [-1024, 1024], "mean": [0.0],
                                   "std": [1.0]})  # fmt: skip
    assert (old.fit, old.resize) == ("letterbox", "legacy")


# ----------------------------------------------------------------------------- CheXNet


def torchvision_resize_short(im: Image.Image, short: int) -> Image.Image:
    """torchvision ``Resize(int)`` on a PIL image: shorter side to ``short``, the other int(short * l / s)."""
    w, h = im.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return im.resize(size, Image.BILINEAR)


def five_crop(im: Image.Image, size: int) -> list[Image.Image]:
    w, h = im.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    boxes = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size), (left, top)]
    return [im.crop((x, y, x + size, y + size)) for x, y in boxes]


def chexnet_reference(path: Path, sd: dict) -> np.ndarray:
    """arnoweng/CheXNet's test-time transform and ten-crop averaging on one file -> 14 outputs."""
    im = torchvision_resize_short(Image.open(path).convert("RGB"), 256)
    crops = five_crop(im, 224) + five_crop(im.transpose(Image.FLIP_LEFT_RIGHT), 224)  # TenCrop
    x = torch.stack(
        [torch.from_numpy(np.asarray(c, dtype=np.float32) / 255.0).permute(2, 0, 1) for c in crops]
    )
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = torch.sigmoid(tv_forward(sd, x, TINY["blocks"])[0])  # Sequential(Linear, Sigmoid)
    return out.view(1, 10, -1).mean(1).numpy()[0]


@pytest.mark.parametrize("kind", ["square8", "tall8", "wide8"])
def test_chexnet_matches_its_ten_crop_test_transform_on_real_films(films, tmp_path, kind):
    sd = make_tv_state(TINY, 3, 14, seed=22)
    src = tmp_path / "model.pth.tar"
    write_chexnet(src, sd)
    ckpt = import_weights("chexnet", src, tmp_path / "chexnet.safetensors").out
    paths = films[kind]
    predictor = Predictor.load(ckpt, backend="torch")
    assert predictor.meta.preprocessing.crops == 10
    names = predictor.labels
    cols = [list(CHEXNET_LABELS).index(n) for n in names]
    ours = probs_by_name(predictor.predict(paths, workers=0), names)
    ref = np.stack([chexnet_reference(p, sd) for p in paths])[:, cols]
    assert ref.std() > 0.02
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
    # a single centre crop is not what the publisher evaluates: the ten-crop average differs from it
    centre = predictor.probabilities(
        np.stack([predictor.prepare(np.asarray(Image.open(p)))[0] for p in paths])
    )
    assert np.abs(centre[0] - ref).max() > 10 * np.abs(ours - ref).max()
    # Grad-CAM explains the centre crop and maps it back onto the whole film (what it never saw: 0)
    heat = predictor.explain(paths[0], names[0])
    assert heat.shape == np.asarray(Image.open(paths[0])).shape


# ----------------------------------------------------------------------------- Keras (the course notebook)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("norm", ["per-image", "training-set"])
def test_keras_notebook_generators_against_keras_running_the_file(films, tmp_path, norm):
    """The notebook's ImageDataGenerator (samplewise for per-image; featurewise fitted on a training sample)
    and flow_from_dataframe (load_img: RGB, nearest, stretched), then Keras loading the same .h5 file."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="keras 3 is a test-only extra: pip install 'keras>=3'")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()!r} here; this test needs KERAS_BACKEND=torch")
    pd = pytest.importorskip("pandas")
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    size = 64
    model = keras_seed_model(keras, size, seed=5)
    src = tmp_path / "pretrained_model.h5"
    model.save(src)

    paths = films["square8"] + films["wide8"] + films["tall8"]
    table = pd.DataFrame({"path": [str(p) for p in paths]})
    flow = {"x_col": "path", "class_mode": None, "target_size": (size, size), "shuffle": False,
            "batch_size": len(paths)}  # fmt: skip
    if norm == "per-image":
        generator = ImageDataGenerator(samplewise_center=True, samplewise_std_normalization=True)
        keras_norm = "per-image"
    else:  # the notebook fits featurewise statistics on a sample of training images
        sample = next(ImageDataGenerator().flow_from_dataframe(table, **flow))
        generator = ImageDataGenerator(featurewise_center=True, featurewise_std_normalization=True)
        generator.fit(sample)
        assert np.ptp(generator.mean) == 0 and np.ptp(generator.std) == 0  # gray films: one value
        keras_norm = f"{float(generator.mean.ravel()[0])!r},{float(generator.std.ravel()[0])!r}"
    batch = next(generator.flow_from_dataframe(table, **flow))
    reloaded = keras.models.load_model(src, compile=False)
    ref = np.asarray(keras.ops.convert_to_numpy(reloaded(batch, training=False)))
    assert ref.std() > 0.02

    ckpt = import_weights("keras", src, tmp_path / "k.safetensors", size=size, keras_norm=keras_norm).out
    for backend in ("torch", "onnx"):  # a per-image normalisation is exported unfolded
        predictor = Predictor.load(ckpt, backend=backend)
        ours = probs_by_name(predictor.predict(paths, workers=0), predictor.labels)
        cols = [list(CHEXNET_LABELS).index(n) for n in predictor.labels]
        np.testing.assert_allclose(ours, ref[:, cols], atol=TOL, rtol=0, err_msg=backend)


def test_evaluate_feeds_each_checkpoint_its_own_recipe(films, xrv_model, tmp_path):
    """evaluate and calibrate read the films once and make each checkpoint's inputs by its recipe: an xrv
    import (centre crop) and a CheXNet import (ten-crop) side by side give what Predictor gives each."""
    import pandas as pd

    from cxrdx.evaluation.eval_set import EvalSet, run_views

    sd = make_tv_state(TINY, 3, 14, seed=23)
    write_chexnet(tmp_path / "model.pth.tar", sd)
    chexnet = import_weights("chexnet", tmp_path / "model.pth.tar", tmp_path / "c.safetensors").out
    paths = films["wide8"] + films["square16"]
    table = pd.DataFrame({"image": [p.name for p in paths], "path": [str(p) for p in paths]})
    predictors = [Predictor.load(xrv_model[2], backend="torch"), Predictor.load(chexnet, backend="torch")]
    views, pos = run_views(predictors, EvalSet("films", table), tta=False, batch_size=4, progress=False)
    assert list(pos) == list(range(len(paths)))
    for predictor, v in zip(predictors, views, strict=True):
        expected = probs_by_name(predictor.predict(paths, workers=0), predictor.labels)
        np.testing.assert_allclose(v[0], expected, atol=1e-6, rtol=0)
