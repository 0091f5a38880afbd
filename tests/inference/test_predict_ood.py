"""Out-of-distribution gate in predictions: ood_score / in_distribution, both backends, table, CLI, app, train."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import write_cache

from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference.backends import FEATURES_NAME, OUTPUT_NAME, onnxruntime_available
from cxrdx.inference.formats import format_csv, format_json, format_table
from cxrdx.inference.predictor import Prediction, Predictor
from cxrdx.model.checkpoint import CheckpointMeta, read_checkpoint_meta, save_checkpoint
from cxrdx.model.networks import build_model
from cxrdx.model.ood import fit_ood_into_checkpoint, reference

SIZE = 64
BACKENDS = ["torch", *(["onnx"] if onnxruntime_available() else [])]


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))


def _phantoms(n: int, seed: int) -> list[np.ndarray]:
    from cxrdx.phantom.render import make_phantom

    rng = np.random.default_rng(seed)
    return [make_phantom(rng, SIZE, [])[0].astype(np.float32) / 255 for _ in range(n)]


def _ckpt(path: Path, thresholds: dict | None = None) -> Path:
    torch.manual_seed(0)
    meta = CheckpointMeta(
        architecture="densenet-tiny", preprocessing=Preprocessing(size=SIZE), thresholds=thresholds
    )
    save_checkpoint(path, build_model("densenet-tiny"), meta)
    return path


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return _ckpt(tmp_path_factory.mktemp("plain") / "plain.safetensors")


@pytest.fixture(scope="module")
def gated(tmp_path_factory) -> Path:
    """A tiny network with an OOD reference fitted on phantoms (an untrained net's features still differ)."""
    path = _ckpt(tmp_path_factory.mktemp("gated") / "gated.safetensors", thresholds={"Mass": 0.5})
    fit_ood_into_checkpoint(path, _phantoms(80, 0), _phantoms(40, 1))
    return path


def _noise(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(9)
    return [rng.random((SIZE, SIZE)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_a_reference_the_fields_are_null(plain, backend):
    predictor = Predictor.load(plain, backend=backend)
    assert predictor.ood is None
    (pred,) = predictor.predict(_phantoms(1, 5), workers=0)
    record = pred.to_dict()
    assert record["ood_score"] is None and record["in_distribution"] is None
    assert "OUT OF DISTRIBUTION" not in format_table([pred], None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_is_flagged_and_held_out_phantoms_are_not(gated, backend):
    predictor = Predictor.load(gated, backend=backend)
    assert predictor.backend == backend and predictor.ood is not None
    held_out, noise = _phantoms(20, 7), _noise(5)
    preds = predictor.predict(held_out + noise, batch_size=4, workers=0)
    inside = [p.in_distribution for p in preds]
    assert all(isinstance(p.ood_score, float) for p in preds)
    assert sum(inside[:20]) >= 18 and not any(inside[20:])
    assert min(p.ood_score for p in preds[20:]) > max(p.ood_score for p in preds[:20])
    # the score does not depend on the batch, and TTA scores the unflipped view
    alone = predictor.predict(noise[:1], batch_size=1, workers=0)[0]
    tta = predictor.predict(noise[:1], tta=True, workers=0)[0]
    assert alone.ood_score == pytest.approx(preds[20].ood_score, rel=1e-4)
    assert tta.ood_score == pytest.approx(alone.ood_score, rel=1e-4)


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
def test_onnx_export_has_the_features_output_and_agrees_with_torch(gated):
    onnx_p = Predictor.load(gated, backend="onnx")
    torch_p = Predictor.load(gated, backend="torch")
    names = [o.name for o in onnx_p.session.get_outputs()]
    assert names == [OUTPUT_NAME, FEATURES_NAME, "cams"]  # cams: class activation maps (issue 31)
    x = np.stack([onnx_p.prepare(im)[0] for im in _phantoms(3, 3)])
    feats = onnx_p.features(x)
    assert feats.shape == (
        3,
        onnx_p.ood.dim,
    )  # several depths (cxrdx.model.networks.depth_features_and_logits)
    assert feats.shape[1] > torch_p.model.class_layers.out.in_features
    np.testing.assert_allclose(feats, torch_p.features(x), rtol=1e-4, atol=1e-5)
    a = onnx_p.predict(_noise(2), workers=0)
    b = torch_p.predict(_noise(2), workers=0)
    for p, q in zip(a, b, strict=True):
        assert p.ood_score == pytest.approx(q.ood_score, rel=1e-4)


def test_table_json_and_csv_mark_ood_images():
    base = {"Mass": 0.7, "Nodule": 0.1}
    inside = Prediction("in.png", dict(base), {"Mass": True}, ood_score=3.0, in_distribution=True)
    outside = Prediction("out.png", dict(base), {"Mass": True}, ood_score=41.5, in_distribution=False)
    table = format_table([inside, outside], {"Mass": 0.5}, ood_threshold=4.2)
    first, second = table.split("== out.png")
    assert "OUT OF DISTRIBUTION" not in first and "UNRELIABLE" not in first
    assert "OUT OF DISTRIBUTION" in second and "41.50 > threshold 4.20" in second
    assert "positive (UNRELIABLE: out of distribution): Mass" in second
    records = json.loads(format_json([inside, outside]))
    assert [r["in_distribution"] for r in records] == [True, False]
    assert records[1]["ood_score"] == 41.5
    rows = list(csv.DictReader(io.StringIO(format_csv([inside, outside], ["Mass", "Nodule"], {"Mass": 0.5}))))
    assert [r["in_distribution"] for r in rows] == ["1", "0"] and rows[1]["ood_score"] == "41.5000"


def test_cli_predict_warns_about_ood_images(gated, tmp_path, capsys):
    from testkit import run_cli

    paths = []
    for name, im in (("phantom", _phantoms(1, 11)[0]), ("noise", _noise(1)[0])):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(np.rint(im * 255).astype(np.uint8)).save(paths[-1])
    rc, out, err = run_cli(capsys, ["predict", *paths, "--weights", gated, "--backend", "torch"])
    assert rc == 0
    noise_part = out.split("== ")[
        [i for i, s in enumerate(out.split("== ")) if s.startswith(str(paths[1]))][0]
    ]
    assert "OUT OF DISTRIBUTION" in noise_part
    assert "1 image(s) OUT OF DISTRIBUTION" in err
    rc, out, _ = run_cli(
        capsys, ["predict", *paths, "--weights", gated, "--format", "json", "--backend", "torch"]
    )
    flags = {Path(r["image"]).stem: r["in_distribution"] for r in json.loads(out)}
    assert flags["noise"] is False


def test_app_shows_the_warning_and_the_api_returns_the_threshold(gated):
    from cxrdx.app.analyzer import Analyzer
    from cxrdx.app.components import findings_table, positives_markdown

    predictor = Predictor.load(gated, backend="torch")
    pred = predictor.predict(_noise(1), workers=0)[0]
    assert pred.in_distribution is False
    md = positives_markdown(pred, predictor.ood.threshold)
    assert "OUT OF DISTRIBUTION" in md and "unreliable" in md
    assert "(unreliable)" in findings_table(pred, predictor.thresholds)
    record = Analyzer(predictor).record(pred)
    assert record["in_distribution"] is False and record["ood_threshold"] == predictor.ood.threshold
    fine = predictor.predict(_phantoms(1, 12), workers=0)[0]
    assert "OUT OF DISTRIBUTION" not in positives_markdown(fine, predictor.ood.threshold)


def _toy_cache(out: Path, n_train: int = 48, n_val: int = 16, size: int = 32) -> Path:
    """A minimal `cxrdx prepare` cache of toy images (finding 1 = a bright square)."""
    from cxrdx.labels import FINDINGS

    rng = np.random.default_rng(0)
    n = n_train + n_val
    labels = (rng.random((n, len(FINDINGS))) < 0.3).astype(np.uint8)
    images = np.clip(60 + 40 * rng.standard_normal((n, size, size)), 0, 255).astype(np.uint8)
    images[labels[:, 1] == 1, 8:24, 8:24] = 220
    return write_cache(out, images, labels, ["train"] * n_train + ["val"] * n_val)


def test_train_stores_the_reference_in_the_best_checkpoint(tmp_path):
    from cxrdx.training.config import TrainConfig
    from cxrdx.training.loop import train

    cache = _toy_cache(tmp_path / "cache")
    cfg = TrainConfig(
        data=str(cache),
        out=str(tmp_path / "run"),
        arch="densenet-tiny",
        epochs=1,
        batch_size=16,
        progress=False,
        workers=0,
        threads=1,
    )
    result = train(cfg)
    meta = read_checkpoint_meta(result.best_path)
    stats = reference(meta.ood)
    assert stats is not None and stats.threshold is not None and meta.ood["method"] == "mahalanobis-depths"
    assert all(p.precision.shape == (p.dim, p.dim) for p in stats.parts)
    assert meta.ood["fitted_on"]["train_images"] == 48 and meta.ood["fitted_on"]["val_images"] == 16
    assert meta.ood["fitted_on"]["by"] == "cxrdx train"
    preds = Predictor.load(result.best_path, backend="torch").predict(
        [np.full((32, 32), 0.25, np.float32)], workers=0
    )
    assert isinstance(preds[0].ood_score, float) and preds[0].in_distribution is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpoint_with_a_first_format_reference_still_predicts_its_score(tmp_path, backend):
    """Written before issue 26: method "mahalanobis" on the final pooled features only. It loads, and its
    score is the distance of the final features, now read from the trailing columns of the wider output."""
    from cxrdx.model.checkpoint import load_checkpoint, update_checkpoint_meta
    from cxrdx.model.networks import features_and_logits
    from cxrdx.model.ood import OodStats, fit

    path = _ckpt(tmp_path / "old.safetensors")
    model, meta = load_checkpoint(path)
    x = torch.from_numpy(np.stack([meta.preprocessing(im)[0] for im in _phantoms(30, 5)]))
    with torch.no_grad():
        final = features_and_logits(model.eval(), x)[0].numpy()
    old = fit(final[:20])
    old = OodStats(old.mean, old.precision, old.shrinkage, float(np.percentile(old.score(final[20:]), 99)))
    update_checkpoint_meta(path, lambda m: setattr(m, "ood", old.to_meta(fitted_on={"by": "cxrdx 0.x"})))
    assert read_checkpoint_meta(path).ood["method"] == "mahalanobis"
    probe = _phantoms(2, 6)
    preds = Predictor.load(path, backend=backend).predict(probe, workers=0)
    with torch.no_grad():
        feats = features_and_logits(
            model, torch.from_numpy(np.stack([meta.preprocessing(im)[0] for im in probe]))
        )[0]
    expect = old.score(feats.numpy())
    np.testing.assert_allclose([p.ood_score for p in preds], expect, rtol=1e-3)
    assert all(p.in_distribution is not None for p in preds)
