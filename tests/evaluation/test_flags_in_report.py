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
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    chance = [
        n
        for n, c in metrics["classes"].items()
        if c["auroc_ci"] and c["auroc_ci"][0] <= 0.5 <= c["auroc_ci"][1]
    ]
    assert chance and set(chance) <= set(metrics["flags"])
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
    text = model_card(SimpleNamespace(meta=meta, backend="torch"))
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
