"""Calibrated outputs in predict: one place for both backends, "calibration" in every record, the wording
"score (uncalibrated)" for uncalibrated checkpoints, and warnings when thresholds are applied differently."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrdx.cli import main as _main
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference.predictor import Predictor
from cxrdx.labels import FINDINGS
from cxrdx.metrics.calibration import apply_calibration, prior_calibration
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint

SIZE = 32


def main(argv) -> int:
    return _main([str(a) for a in argv])


def header(table: str) -> list[str]:
    """The first two words of the table's column header line."""
    return next(line.split()[:2] for line in table.splitlines() if line.split()[:1] == ["finding"])


PREV = np.linspace(0.02, 0.3, len(FINDINGS))


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))


def calibrated(method: str = "prior+temperature") -> dict:
    cal = prior_calibration(FINDINGS, 1 - PREV, PREV, "test")
    if method == "prior+temperature":
        cal = {**cal, "method": method, "temperature": {n: 0.5 + 0.1 * i for i, n in enumerate(FINDINGS)}}
    return cal


def make_ckpt(path: Path, **meta_kw) -> Path:
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=SIZE), **meta_kw)
    save_checkpoint(path, build_model("densenet-tiny"), meta)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(out / f"x{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(paths[-1])
    return paths


def test_calibration_is_applied_once_for_torch_and_onnx(tmp_path, images):
    ckpt = make_ckpt(tmp_path / "c.safetensors", calibration=calibrated())
    torch_p = Predictor.load(ckpt, backend="torch")
    assert torch_p.calibrated and torch_p.calibration["method"] == "prior+temperature"
    x = np.stack([torch_p.prepare(torch_p.read(p)[0])[0] for p in images])
    raw = torch_p.raw_views(x)[0]
    probs, _ = torch_p.probabilities(x)
    assert np.allclose(probs, apply_calibration(raw, torch_p.calibration, FINDINGS), atol=0, rtol=0)
    assert np.allclose(torch_p.probabilities(x, calibrated=False)[0], raw)
    assert not np.allclose(probs, raw, atol=1e-3)
    preds = torch_p.predict(images)
    assert all(p.calibration == "prior+temperature" for p in preds)
    assert np.allclose(
        [[p.probabilities[n] for n in FINDINGS] for p in preds], probs, atol=2e-3
    )  # uint8 path
    pytest.importorskip("onnxruntime")
    onnx_p = Predictor.load(ckpt, backend="onnx")
    assert np.abs(onnx_p.probabilities(x)[0] - probs).max() < 1e-4
    # TTA: each view calibrated, then averaged
    mean, spread = onnx_p.probabilities(x, tta=True)
    views = apply_calibration(onnx_p.raw_views(x, tta=True), onnx_p.calibration, FINDINGS)
    assert np.allclose(mean, views.mean(0)) and np.allclose(spread, views.std(0))


def test_records_carry_calibration_and_uncalibrated_outputs_say_score(tmp_path, images, capsys):
    plain = make_ckpt(tmp_path / "imported.safetensors")  # e.g. an import: no calibration recorded
    assert not Predictor.load(plain, backend="torch").calibrated
    rc = main(["predict", "--weights", plain, "--backend", "torch", "--format", "json", *images])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert {r["calibration"] for r in json.loads(out)} == {"none"}
    assert "score (uncalibrated)" in err
    rc = main(["predict", "--weights", plain, "--backend", "torch", *images])
    out, _ = capsys.readouterr()
    assert rc == 0 and "score (uncalibrated)" in out
    assert header(out) == ["finding", "score"]
    rc = main(["predict", "--weights", plain, "--backend", "torch", "--format", "csv", *images])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["calibration"] for r in rows} == {"none: score (uncalibrated)"}

    cal = make_ckpt(tmp_path / "cal.safetensors", calibration=calibrated("prior"))
    rc = main(["predict", "--weights", cal, "--backend", "torch", *images])
    out, _ = capsys.readouterr()
    assert rc == 0 and "uncalibrated" not in out and header(out) == ["finding", "prob"]
    rc = main(["predict", "--weights", cal, "--backend", "torch", "--format", "json", *images])
    assert {r["calibration"] for r in json.loads(capsys.readouterr().out)} == {"prior"}


def test_old_checkpoint_is_corrected_from_recorded_training_prevalence(tmp_path, images):
    old = make_ckpt(
        tmp_path / "old.safetensors",
        provenance={"train_prevalence": dict(zip(FINDINGS, PREV.tolist(), strict=True))},
    )
    p = Predictor.load(old, backend="torch")
    assert p.calibration["method"] == "prior" and p.predict(images[:1])[0].calibration == "prior"
    x = p.prepare(p.read(images[0])[0])[0][None]
    raw = p.raw_views(x)[0]
    expected = 1 / (1 + np.exp(-(np.log(raw / (1 - raw)) - np.log((1 - PREV) / PREV))))
    assert np.allclose(p.probabilities(x)[0], expected, atol=1e-6)


def test_predict_warns_when_thresholds_are_applied_without_the_tta_they_were_chosen_with(
    tmp_path, images, capsys
):
    info = {"tta": True, "calibration": "prior+temperature", "split": "val", "positives": {}}
    ckpt = make_ckpt(
        tmp_path / "t.safetensors",
        calibration=calibrated(),
        thresholds={"Mass": 0.2},
        threshold_method="youden",
        threshold_info=info,
    )
    rc = main(["predict", "--weights", ckpt, "--backend", "torch", *images])
    err = capsys.readouterr().err
    assert rc == 0 and "chosen with test-time augmentation but are applied without" in err
    rc = main(["predict", "--weights", ckpt, "--backend", "torch", "--tta", *images])
    assert rc == 0 and "test-time augmentation" not in capsys.readouterr().err
    p = Predictor.load(ckpt, backend="torch")
    assert p.threshold_notes(tta=True) == [] and len(p.threshold_notes(tta=False)) == 1
    # thresholds chosen on another calibration than the one now applied are flagged too
    p.meta.threshold_info = {**info, "calibration": "none"}
    assert any("calibrated outputs" in n for n in p.threshold_notes(tta=True))


def test_thresholds_stored_before_calibration_existed_keep_their_calls(tmp_path, images):
    """Legacy thresholds (no threshold_info) were chosen on raw scores: moved onto the corrected scale."""
    prov = {"train_prevalence": dict(zip(FINDINGS, PREV.tolist(), strict=True))}
    plain = Predictor.load(make_ckpt(tmp_path / "raw.safetensors"), backend="torch")
    raw = plain.predict(images)
    thresholds = {n: raw[1].probabilities[n] for n in FINDINGS}  # exactly at one image's scores
    old = Predictor.load(
        make_ckpt(tmp_path / "old.safetensors", provenance=prov, thresholds=thresholds), backend="torch"
    )
    assert old.calibration["method"] == "prior" and old.thresholds != thresholds
    for r, p in zip(raw, old.predict(images), strict=True):
        assert p.positive == {n: r.probabilities[n] >= t for n, t in thresholds.items()}


def test_a_finding_that_was_not_calibrated_is_a_score_in_every_output(tmp_path):
    """Per-finding calibration reaches the Prediction, its JSON record, the CSV and the table."""
    from cxrdx.inference.formats import csv_columns, csv_row, format_table
    from cxrdx.inference.prediction import Prediction

    per = {n: "prior+temperature" for n in FINDINGS}
    per["Hernia"] = "none"
    pred = Prediction(
        "a.png",
        {n: 0.5 for n in FINDINGS},
        calibration="prior+temperature",
        calibration_by_finding=per,
    )
    assert pred.value_word("Hernia") == "score (uncalibrated)" and pred.value_word("Mass") == "probability"
    record = pred.to_dict()
    assert record["calibration_by_finding"]["Hernia"] == "none"
    row = dict(zip(csv_columns(FINDINGS, None, False), csv_row(pred, FINDINGS, None, False), strict=True))
    assert "score (uncalibrated, not fitted): Hernia" in row["calibration"]
    table = format_table([pred], None)
    assert "Hernia (score)" in table and "Hernia could not be calibrated" in table
    assert "Mass (score)" not in table


def test_an_old_platt_checkpoint_reads_its_skipped_findings_as_scores(tmp_path, images):
    """A checkpoint written before per_finding existed: one "prior+temperature" record whose Platt fit skipped
    Hernia (shift 0, temperature 1, listed in temperature_kept_at_1). Hernia is read as a score (uncalibrated)
    and its number is the raw score; the others stay probabilities."""
    temps = {n: 1.5 for n in FINDINGS}
    shifts = {n: 0.7 for n in FINDINGS}
    temps["Hernia"], shifts["Hernia"] = 1.0, 0.0
    old = {
        "method": "prior+temperature",
        "log_prior_shift": shifts,
        "temperature": temps,
        "fitted_on": {"prior": "fitted with the temperature (Platt)", "temperature_kept_at_1": ["Hernia"]},
    }
    ckpt = make_ckpt(tmp_path / "old.safetensors", calibration=old)
    raw = Predictor.load(make_ckpt(tmp_path / "raw.safetensors"), backend="torch").predict(
        images[:1], workers=0
    )[0]
    pred = Predictor.load(ckpt, backend="torch").predict(images[:1], workers=0)[0]
    assert pred.calibration == "prior+temperature" and pred.uncalibrated == ["Hernia"]
    assert pred.probabilities["Hernia"] == pytest.approx(raw.probabilities["Hernia"], abs=1e-6)
    assert pred.probabilities["Mass"] != pytest.approx(raw.probabilities["Mass"], abs=1e-3)


def test_predict_json_names_the_findings_that_stay_scores(tmp_path, images, capsys):
    cal = calibrated()
    cal["per_finding"] = {n: "prior+temperature" for n in FINDINGS} | {"Hernia": "none", "Mass": "none"}
    ckpt = make_ckpt(tmp_path / "partial.safetensors", calibration=cal)
    assert main(["predict", "--weights", ckpt, images[0], "--format", "json", "--backend", "torch"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)[0]
    assert (
        record["calibration_by_finding"]["Hernia"] == "none"
        and record["calibration_by_finding"]["Edema"] != "none"
    )
    note = next(line for line in captured.err.splitlines() if "could not be calibrated" in line)
    assert "Hernia" in note and "Mass" in note and "Edema" not in note
