"""The report, the checkpoint's stored evaluation, the app's model card and `explain`'s table flag degenerate
results; the HTML's mean row shows its CI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_calibrate import main, tiny_cache, tiny_checkpoint


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "onnx"))


def test_an_untrained_model_is_flagged_in_the_report_and_the_stored_evaluation(tmp_path, capsys):
    from cxrdx.model.checkpoint import read_checkpoint

    cache = tiny_cache(tmp_path / "cache")
    src = tiny_checkpoint(tmp_path / "src.safetensors")  # random weights: AUROCs near 0.5
    out, new = tmp_path / "report", tmp_path / "new.safetensors"
    argv = ["evaluate", "--weights", src, "--data", cache, "--out", out, "--n-boot", "50", "--no-progress"]
    rc = main([*argv, "--out-weights", new])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    chance = [
        n
        for n, c in metrics["classes"].items()
        if c["auroc_ci"] and c["auroc_ci"][0] <= 0.5 <= c["auroc_ci"][1]
    ]
    assert chance and set(chance) <= set(metrics["flags"])
    assert f"FLAGGED {chance[0]}: " in captured.out  # the CLI's table says so too
    html = (out / "report.html").read_text()
    assert "Flagged: these numbers look like results but mean nothing" in html
    assert "contains 0.5" in html and "\u26a0 flagged" in html
    lo, hi = metrics["mean_auroc_ci"]
    assert f"<td>{metrics['mean_auroc']:.3f} <span class='ci'>[{lo:.3f}, {hi:.3f}]</span></td>" in html
    _, meta = read_checkpoint(new)
    assert meta.evaluation["flags"] == metrics["flags"] and meta.evaluation["mean_auroc_ci"] == [lo, hi]


def test_the_app_model_card_lists_flagged_results():
    from cxrdx.app.components import model_card
    from cxrdx.labels import FINDINGS
    from cxrdx.model.checkpoint import CheckpointMeta

    cal = {
        "method": "prior+temperature",
        "log_prior_shift": dict.fromkeys(FINDINGS, 0.0),
        "temperature": {**dict.fromkeys(FINDINGS, 1.2), "Pleural_Thickening": 20.0},
        "per_finding": dict.fromkeys(FINDINGS, "prior+temperature"),
        "fitted_on": {},
    }
    evaluation = {
        "auroc": {"Hernia": 0.52},
        "mean_auroc": 0.52,
        "flags": {"Hernia": ["AUROC CI [0.300, 0.740] contains 0.5"]},
    }
    meta = CheckpointMeta(architecture="densenet-tiny", calibration=cal, evaluation=evaluation)
    from cxrdx.app.components import banners_html

    text = model_card(SimpleNamespace(meta=meta, backend="torch"))
    assert "Flagged results for Hernia, Pleural_Thickening" in banners_html(SimpleNamespace(meta=meta))
    assert "Flagged results" in text
    assert "**Hernia:** AUROC CI [0.300, 0.740] contains 0.5" in text
    assert "**Pleural_Thickening:** temperature at its bound (T = 20.000" in text


def test_explain_flags_a_pointing_game_below_its_chance_rate():
    from cxrdx.explain.localisation import LocalisationScore, format_localisation

    heatmap = np.zeros((256, 256), np.float32)
    heatmap[250, 250] = 1.0  # the peak far from the big box
    score = LocalisationScore("Effusion")
    score.add("a.png", heatmap, [(0, 0, 128, 256)], 0.5, 128, 32)
    assert score.pointing_game == 0.0 and score.chance > 0
    assert "FLAGGED Effusion: pointing game (strict) 0.000 is below its chance rate" in format_localisation(
        {"Effusion": score}
    )
    assert score.summary()["flags"]


def test_report_tables_mark_false_positive_thresholds_bound_temperatures_and_unfitted_findings():
    from cxrdx.evaluation.metrics_record import CalibrationSummary, FindingMetrics, Thresholds
    from cxrdx.evaluation.report import _calibration, _thresholds

    at = {"tp": 5, "fp": 133, "fn": 2, "tn": 900, "sensitivity": 0.7, "specificity": 0.87}
    at |= {"ppv": 0.036, "npv": 0.99, "f1": 0.07}
    th = {"values": {"Mass": 0.1}, "chosen_on": "val", "method_text": "Youden", "tta": False}
    cls = {
        "Mass": {"threshold": 0.1, "at_threshold": at},
        "Nodule": {"threshold": 0.2, "at_threshold": {**at, "tp": 60}},
    }
    html = _thresholds(Thresholds.from_json(th), {n: FindingMetrics.from_json(c) for n, c in cls.items()})
    mass, nodule = (
        html.split("<tr><td>Mass")[1].split("</tr>")[0],
        html.split("<tr><td>Nodule")[1].split("</tr>")[0],
    )
    assert "\u26a0 flagged" in mass and "5 TP against 133 FP" in mass and "flagged" not in nodule
    row = {
        "prevalence": 0.1,
        "mean_predicted_before": 0.5,
        "mean_predicted_after": 0.1,
        "ece_before": 0.4,
        "ece_after": 0.003,
    }
    cal = {
        "method": "prior+temperature",
        "per_finding": {"Pleural_Thickening": row, "Hernia": row},
        "per_finding_method": {"Pleural_Thickening": "prior+temperature", "Hernia": "none"},
        "mean_abs_gap_before": 0.4,
        "mean_abs_gap_after": 0.0,
        "mean_ece_before": 0.4,
        "mean_ece_after": 0.003,
    }
    flags = {"Pleural_Thickening": ["temperature at its bound (T = 20.000, range 0.05-20.0): ..."]}
    html = _calibration(CalibrationSummary.from_json(cal), flags)
    pt = html.split("<tr><td>Pleural_Thickening")[1].split("</tr>")[0]
    assert "\u26a0 flagged" in pt and "T = 20.000" in pt
    assert "Hernia (not calibrated: a score)" in html
