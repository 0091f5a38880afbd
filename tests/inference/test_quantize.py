"""int8: `cxrdx quantize` calibrates on train, checks on val, writes only what passed; predict --precision int8."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from testkit import run_cli, tiny_checkpoint, write_cache

from cxrdx.errors import CheckpointError, ConfigError
from cxrdx.inference import export
from cxrdx.inference.backends import make_session, onnxruntime_available
from cxrdx.inference.int8 import int8_record, int8_variant
from cxrdx.inference.predictor import Predictor
from cxrdx.jobs.quantize_build import QuantizationRefused, QuantizeConfig, quantize
from cxrdx.labels import FINDINGS

pytestmark = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cxrdx-cache"))


@pytest.fixture
def model_and_cache(tmp_path):
    """A tiny 32 px checkpoint and a 48 px cache (resized on the way in) with train/val/test splits."""
    rng = np.random.default_rng(0)
    n = 60
    images = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 2, (n, len(FINDINGS))).astype(float)
    splits = ["train"] * 30 + ["val"] * 20 + ["test"] * 10
    cache = write_cache(tmp_path / "cache", images, labels, splits)
    return tiny_checkpoint(tmp_path / "m.safetensors", size=32), cache


def test_quantize_writes_a_checked_int8_model_that_predict_runs(model_and_cache, tmp_path):
    ckpt, cache = model_and_cache
    report = quantize(QuantizeConfig(str(ckpt), str(cache), n_calib=16, max_auroc_drop=1.0))
    assert report.path.is_file() and report.path == export.cached_export_path(
        export.file_sha256(ckpt), int8_variant()
    )
    assert report.n_calib == 16 and report.n_check == 20
    assert set(report.auroc_fp32) == set(FINDINGS)  # random 0/1 labels: every finding has both classes
    record = int8_record(make_session(report.path))
    assert record["n_check"] == 20 and record["variant"] == report.variant
    assert record["drop"] == pytest.approx(report.drop)
    assert report.calls_changed is None  # the checkpoint has no thresholds

    image = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    fp32 = Predictor.load(ckpt, backend="onnx").predict([tmp_path / "x.png"])[0]
    predictor = Predictor.load(ckpt, precision="int8")
    assert predictor.backend == f"onnx {report.variant}" and predictor.precision == report.variant
    int8 = predictor.predict([tmp_path / "x.png"])[0]
    assert int8.ok and list(int8.probabilities) == list(fp32.probabilities)  # by name, same order
    diff = max(abs(int8.probabilities[n] - fp32.probabilities[n]) for n in FINDINGS)
    assert 0 < diff < 0.05  # quantized (not the fp32 file), and close to it


def test_norms_as_affine_is_the_same_function(model_and_cache):
    """The pre-activation norms rewritten as Mul + Add (so they quantize): equal outputs, no norm left."""
    import onnx

    from cxrdx.inference.backends import GRAY_NAME
    from cxrdx.jobs.quantize_build import norms_as_affine
    from cxrdx.model.checkpoint import load_checkpoint

    ckpt, _cache = model_and_cache
    model, meta = load_checkpoint(ckpt)
    fp32 = export.onnx_bytes(model, meta, "test", fold=True)
    affine = norms_as_affine(fp32)
    ops = [n.op_type for n in onnx.load_from_string(affine).graph.node]
    before = [n.op_type for n in onnx.load_from_string(fp32).graph.node].count("BatchNormalization")
    assert before > 0 and "BatchNormalization" not in ops and ops.count("Mul") >= before
    g = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    for a, b in zip(
        make_session(fp32).run(None, {GRAY_NAME: g}),
        make_session(affine).run(None, {GRAY_NAME: g}),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_quantize_refuses_a_model_that_loses_auroc_and_writes_nothing(model_and_cache):
    ckpt, cache = model_and_cache
    with pytest.raises(QuantizationRefused, match=r"loses .* mean validation AUROC.*nothing was written"):
        quantize(QuantizeConfig(str(ckpt), str(cache), n_calib=8, max_auroc_drop=-1.0))
    assert not export.cached_export_path(export.file_sha256(ckpt), int8_variant()).exists()
    with pytest.raises(CheckpointError, match=r"no int8 model .*`cxrdx quantize --weights"):
        Predictor.load(ckpt, precision="int8")


def test_quantize_never_touches_the_test_split(model_and_cache):
    ckpt, cache = model_and_cache
    for kw in ({"calib_split": "test"}, {"check_split": "test"}):
        with pytest.raises(ConfigError, match="test split is refused"):
            quantize(QuantizeConfig(str(ckpt), str(cache), **kw))


def test_int8_needs_onnx_runtime_on_the_cpu(model_and_cache):
    ckpt, _cache = model_and_cache
    with pytest.raises(ConfigError, match="--precision int8 runs on ONNX Runtime"):
        Predictor.load(ckpt, backend="torch", precision="int8")


def test_int8_variant_follows_the_cpu(monkeypatch):
    from cxrdx.inference import int8 as q

    for flags, want in (
        ({"sse2", "avx2"}, "int8r7"),  # AVX2 without VNNI: 7-bit weights against u8 x s8 saturation
        ({"sse2", "avx2", "avx512f", "avx512_vnni"}, "int8"),
        ({"asimd"}, "int8"),  # ARM
    ):
        monkeypatch.setattr(q, "cpu_info", lambda flags=flags: ("cpu", frozenset(flags)))
        assert q.int8_variant() == want


def test_cli_quantize_then_predict_int8(model_and_cache, tmp_path, capsys):
    ckpt, cache = model_and_cache
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(tmp_path / "y.png")
    code, _out, err = run_cli(
        capsys, ["predict", "--weights", str(ckpt), "--precision", "int8", str(tmp_path / "y.png")]
    )
    assert code != 0 and "cxrdx quantize --weights" in err and "Traceback" not in err
    refused = [
        "quantize",
        "--weights",
        str(ckpt),
        "--data",
        str(cache),
        "--calib",
        "8",
        "--max-auroc-drop",
        "-1",
    ]
    code, _out, err = run_cli(capsys, refused)
    assert code == 1 and "refused" in err and "nothing was written" in err
    code, out, err = run_cli(capsys, refused[:-1] + ["1"])
    assert code == 0 and "mean AUROC" in out and "wrote" in out
    code, out, err = run_cli(
        capsys,
        [
            "predict",
            "--weights",
            str(ckpt),
            "--precision",
            "int8",
            "--format",
            "csv",
            str(tmp_path / "y.png"),
        ],
    )
    assert code == 0 and f"backend onnx {int8_variant()}" in err and "y.png" in out
    assert "checked on 20 validation images, mean AUROC" in err


def test_int8_measures_the_ood_score_and_applies_a_threshold_refitted_for_its_features(tmp_path, monkeypatch):
    """int8 features against the fp32 reference: the shift is measured on validation, the threshold refitted
    (fp32's x the median int8 / fp32 ratio), and Predictor(int8) applies it."""
    from cxrdx.jobs.quantize_build import ood_agreement
    from cxrdx.model.ood import fit_ood_into_checkpoint

    rng = np.random.default_rng(0)
    n = 60
    images = rng.integers(60, 200, (n, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 2, (n, len(FINDINGS))).astype(float)
    cache = write_cache(tmp_path / "cache", images, labels, ["train"] * 30 + ["val"] * 20 + ["test"] * 10)
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors", size=32)
    squares = [im.astype(np.float32) / 255 for im in images]
    fit_ood_into_checkpoint(ckpt, squares[:30], squares[30:50], fitted_on={"by": "test"})
    import cxrdx.jobs.quantize_build as q

    def disagreeing(ood, f32, f8):  # the real measurement, with half of the verdicts made to differ
        return {**ood_agreement(ood, f32, f8), "verdicts_changed": 0.5}

    monkeypatch.setattr(q, "ood_agreement", disagreeing)
    with pytest.raises(QuantizationRefused, match="out-of-distribution verdicts"):
        quantize(
            QuantizeConfig(
                str(ckpt), str(cache), n_calib=16, max_auroc_drop=1.0, max_ood_verdicts_changed=0.0
            )
        )
    monkeypatch.setattr(q, "ood_agreement", ood_agreement)
    config = QuantizeConfig(
        str(ckpt), str(cache), n_calib=16, max_auroc_drop=1.0, max_ood_verdicts_changed=1.0
    )
    report = quantize(config)
    o = report.ood
    assert o is not None and o["n"] == 20 and o["threshold_fp32"] is not None
    assert o["threshold_int8"] == pytest.approx(o["threshold_fp32"] * (1 + o["median_ratio_minus_1"]))
    assert o["max_rel_diff"] > 0  # int8 features are not fp32's
    assert int8_record(make_session(report.path))["ood"] == o
    fp32 = Predictor.load(ckpt, backend="onnx")
    int8 = Predictor.load(ckpt, precision="int8")
    assert (
        int8.ood.threshold == pytest.approx(o["threshold_int8"]) and fp32.ood.threshold == o["threshold_fp32"]
    )
    # the refit undoes a systematic shift: int8 scores 10 % high flip no verdict with the refitted threshold
    stats = fp32.ood
    mean = np.concatenate([part.mean for part in stats.parts])  # every depth's mean, in column order
    f = rng.normal(size=(200, len(mean))).astype(np.float32) + mean
    s = stats.score(f)
    meta_ood = {**fp32.meta.ood, "threshold": float(np.median(s))}
    out = ood_agreement(meta_ood, f, mean + (f - mean) * 1.1)  # every distance x 1.1
    assert out["median_ratio_minus_1"] == pytest.approx(0.1, rel=1e-3)
    assert out["verdicts_changed"] == 0.0 and out["verdicts_changed_fp32_threshold"] > 0.1
