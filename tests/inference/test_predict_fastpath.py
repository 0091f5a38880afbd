"""The inference speed-ups keep results: uint8 decode/letterbox, one-forward Grad-CAM, OpenVINO backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import tiny_checkpoint

from cxrdx.explain.gradcam import GradCam, to_source
from cxrdx.imaging.letterbox import letterbox
from cxrdx.imaging.read import read_image
from cxrdx.inference.predictor import Predictor
from cxrdx.labels import FINDINGS
from cxrdx.model.networks import build_model

SIZE = 64


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", SIZE, channels=3)


@pytest.fixture(scope="module")
def gray_png(tmp_path_factory) -> Path:
    """A smooth 8-bit gray image, not square (so the letterbox pads)."""
    rng = np.random.default_rng(1)
    low = Image.fromarray((rng.random((12, 9)) * 255).astype(np.uint8)).resize((90, 120), Image.BILINEAR)
    path = tmp_path_factory.mktemp("img") / "gray.png"
    low.save(path)
    return path


def test_uint8_read_is_the_8bit_pixels_and_float_stays_float(gray_png, tmp_path):
    as_float, _ = read_image(gray_png)
    as_u8, meta = read_image(gray_png, uint8_ok=True)
    assert as_u8.dtype == np.uint8 and meta.bit_depth == 8
    np.testing.assert_array_equal(as_u8, np.round(as_float * 255).astype(np.uint8))
    # the float image read_image made of it, passed back as an array, is recognised as 8-bit
    np.testing.assert_array_equal(read_image(as_float, uint8_ok=True)[0], as_u8)
    sixteen = tmp_path / "16.png"
    Image.fromarray((as_float * 65000 + 7).astype(np.uint16)).save(sixteen)  # not v * 257: true 16-bit
    assert read_image(sixteen, uint8_ok=True)[0].dtype == np.float32


@pytest.mark.parametrize("size", [32, 48, 200])
def test_uint8_letterbox_matches_the_training_cache_within_one_level(gray_png, size):
    image, _ = read_image(gray_png)
    square_f, box_f = letterbox(image, size)
    square_u, box_u = letterbox(np.round(image * 255).astype(np.uint8), size)
    assert square_u.dtype == np.uint8 and box_u == box_f
    diff = np.abs(square_u.astype(int) - np.round(square_f * 255).astype(int))
    assert diff.max() <= 1  # the cache stores round(255 * float letterbox)


def test_gradcam_many_equals_one_class_at_a_time():
    torch.manual_seed(0)
    model = build_model("densenet-tiny").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    cam = GradCam(model)
    classes = [0, 4, 9, 13]
    many = cam.many(x, classes)
    assert many.shape == (len(classes), 2, SIZE, SIZE) and many.dtype == np.float32
    for k, c in enumerate(classes):
        np.testing.assert_allclose(many[k], cam(x, c), atol=1e-5)
    assert sum(float(m.max()) > 0 for m in many) >= 2  # not a comparison of empty maps
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_explain_reuses_one_forward_per_image_and_matches_fresh_gradcam(ckpt, gray_png):
    p = Predictor.load(ckpt, backend="torch")
    image, _ = read_image(gray_png)
    x, box = p.prepare(image)
    fresh = GradCam(p.model)
    for finding in ("Effusion", "Mass", "Effusion"):
        want = to_source(fresh(torch.from_numpy(x[None]), FINDINGS.index(finding))[0], box)
        np.testing.assert_allclose(p.explain(image, finding), want, atol=1e-5)
    other = np.ascontiguousarray(image[::-1])
    x2, box2 = p.prepare(other)  # a new image must not get the previous image's maps
    want = to_source(fresh(torch.from_numpy(x2[None]), FINDINGS.index("Mass"))[0], box2)
    np.testing.assert_allclose(p.explain(other, "Mass"), want, atol=1e-5)


def test_openvino_backend_agrees_with_torch(ckpt, gray_png):
    pytest.importorskip("openvino")
    ov = Predictor.load(ckpt, backend="openvino")
    assert ov.backend == "openvino" and ov.session.precision in ("f32", "bf16", "f16")
    want = Predictor.load(ckpt, backend="torch").predict([gray_png])[0].probabilities
    got = ov.predict([gray_png, gray_png], batch_size=2)
    tol = 1e-4 if ov.session.precision == "f32" else 0.05  # bf16 keeps 8 bits of mantissa
    for pred in got:
        np.testing.assert_allclose(list(pred.probabilities.values()), list(want.values()), atol=tol)
