"""Normalisation and gray channels folded into the first convolution: exact (1e-5) against the unfolded network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference.backends import GRAY_NAME, INPUT_NAME, OUTPUT_NAME, GrayFeed, make_session
from cxrdx.inference.export import onnx_bytes, read_onnx_metadata
from cxrdx.inference.fold import fold_input
from cxrdx.inference.predictor import Predictor
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model

SIZE = 48
PREPS = {
    "ours (one mean/std)": Preprocessing(size=SIZE, mean=(0.45,), std=(0.3,)),
    "imagenet (per channel)": Preprocessing(size=SIZE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "xrv (1 channel, [-1024, 1024])": Preprocessing(
        size=SIZE, channels=1, pixel_range=(-1024.0, 1024.0), mean=(0.0,), std=(1024.0,)
    ),
}


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))


def _model(prep: Preprocessing, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("densenet-tiny", in_channels=prep.channels).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so the fold is tested on a "trained" net
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _gray(n: int = 3, seed: int = 1) -> np.ndarray:
    g = np.random.default_rng(seed).random((n, 1, SIZE, SIZE)).astype(np.float32)
    g[0, 0, :, :5] = 1.0  # bright and dark film edges: the padding is where a naive fold is wrong
    g[1, 0, -4:, :] = 0.0
    return g


def _reference(model: torch.nn.Module, prep: Preprocessing, gray: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(prep.to_input(gray)))).numpy()


@pytest.mark.parametrize("name", list(PREPS))
def test_folded_torch_network_equals_the_unfolded_one(name):
    prep = PREPS[name]
    model, gray = _model(prep), _gray()
    folded = fold_input(model, prep)
    assert folded.features.conv0.weight.shape[1] == 1  # one input channel
    with torch.inference_mode():
        got = torch.sigmoid(folded(torch.from_numpy(gray))).numpy()
    np.testing.assert_allclose(got, _reference(model, prep, gray), rtol=0, atol=1e-5)
    assert np.abs(got - got.mean(0)).max() > 1e-4  # the images give different outputs


@pytest.mark.parametrize("name", list(PREPS))
def test_folded_onnx_graph_equals_the_unfolded_torch_model(name):
    prep = PREPS[name]
    model, gray = _model(prep), _gray()
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=prep, in_channels=prep.channels)
    session = make_session(onnx_bytes(model, meta, "0" * 64, fold=True))
    (inp,) = session.get_inputs()
    assert inp.name == GRAY_NAME and inp.shape[1:] == [1, SIZE, SIZE]
    got = session.run([OUTPUT_NAME], {GRAY_NAME: gray})[0]
    np.testing.assert_allclose(got, _reference(model, prep, gray), rtol=0, atol=1e-5)
    # the usual normalised feed, through GrayFeed: the same numbers
    fed = GrayFeed(session, prep).run([OUTPUT_NAME], {INPUT_NAME: prep.to_input(gray)})[0]
    np.testing.assert_allclose(fed, got, rtol=0, atol=1e-6)


def test_predictor_runs_the_folded_cache_and_agrees_with_torch(tmp_path):
    from PIL import Image

    prep = PREPS["imagenet (per channel)"]
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, _model(prep), CheckpointMeta(architecture="densenet-tiny", preprocessing=prep))
    rng = np.random.default_rng(0)
    images = []
    for i, shape in enumerate([(60, 50), (48, 48), (30, 70)]):
        images.append(tmp_path / f"i{i}.png")
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(images[-1])
    onnx_p = Predictor.load(ckpt, backend="onnx")
    assert getattr(onnx_p.session, "takes_gray", False)
    torch_p = Predictor.load(ckpt, backend="torch")
    a = np.array([[r.probabilities[n] for n in FINDINGS] for r in torch_p.predict(images)])
    b = np.array([[r.probabilities[n] for n in FINDINGS] for r in onnx_p.predict(images)])
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    # predict feeds the folded graph the letterboxed gray squares: no host normalisation to undo
    # (poisoning the undo would change nothing), uint8 files and float arrays, with and without TTA
    onnx_p.session._a0 = np.float32("nan")
    arrays = [rng.random((40, 56), dtype=np.float32)]
    for tta in (False, True):
        want = [torch_p.predict(images + arrays, tta=tta), onnx_p.predict(images + arrays, tta=tta)]
        a2, b2 = (np.array([[r.probabilities[n] for n in FINDINGS] for r in w]) for w in want)
        np.testing.assert_allclose(b2, a2, rtol=0, atol=1e-5)
    cached = list(Path(tmp_path / "cache").rglob("*.onnx"))
    assert len(cached) == 1 and read_onnx_metadata(cached[0])["folded_input"] == "true"
    # a second load opens the cached folded file (no export) and still agrees
    again = Predictor.load(ckpt, backend="onnx")
    c = np.array([[r.probabilities[n] for n in FINDINGS] for r in again.predict(images)])
    np.testing.assert_allclose(c, a, rtol=0, atol=1e-5)


def test_cli_export_fold_writes_a_gray_input_graph(tmp_path, capsys):
    from testkit import run_cli

    prep = PREPS["ours (one mean/std)"]
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, _model(prep), CheckpointMeta(architecture="densenet-tiny", preprocessing=prep))
    rc, out, _ = run_cli(capsys, ["export", "--weights", ckpt, "--onnx", tmp_path / "m.onnx", "--fold"])
    assert rc == 0 and "gray N x 1 x 48 x 48" in out and "max |onnx - torch|" in out
    session = make_session(tmp_path / "m.onnx")
    assert session.get_inputs()[0].name == GRAY_NAME
    np.testing.assert_allclose(
        session.run([OUTPUT_NAME], {GRAY_NAME: _gray()})[0],
        _reference(_model(prep), prep, _gray()),
        atol=1e-5,
    )


def test_a_per_image_normalisation_is_not_folded():
    from cxrdx.errors import CheckpointError
    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.inference.fold import fold_input
    from cxrdx.model.networks import build_model

    prep = Preprocessing(size=64, pixel_range=(0.0, 255.0), normalization="per_image")
    with pytest.raises(CheckpointError, match="per_image"):
        fold_input(build_model("densenet-tiny"), prep)
