"""The evaluation report: the CheXNet reference column, every PNG shown, no NaN."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cxrdx.evaluation.chexnet import CHEXNET_AUROC
from cxrdx.evaluation.evaluate import compute_metrics
from cxrdx.evaluation.metrics_record import MetricsRecord
from cxrdx.evaluation.report import write_report
from cxrdx.labels import FINDINGS
from cxrdx.metrics.thresholds import choose_thresholds


def _random_set(rng, n=300, n_patients=90, names=FINDINGS):
    y = (rng.random((n, len(names))) < 0.3).astype(np.int64)
    probs = np.clip(0.3 * y + rng.random((n, len(names))) * 0.7, 0, 1)
    patients = rng.integers(0, n_patients, n).astype(str)
    return y, probs, patients


def test_undefined_classes_are_named_and_left_out_of_the_mean():
    rng = np.random.default_rng(6)
    y, probs, patients = _random_set(rng)
    y[:, FINDINGS.index("Hernia")] = 0
    y[:, FINDINGS.index("Edema")] = 1
    metrics = compute_metrics(y, probs, patients, FINDINGS, n_boot=20).to_json()  # as metrics.json holds it
    assert metrics["undefined_classes"] == ["Edema", "Hernia"]
    assert metrics["mean_auroc_classes"] == [n for n in FINDINGS if n not in ("Edema", "Hernia")]
    used = [metrics["classes"][k]["auroc"] for k in metrics["mean_auroc_classes"]]
    assert metrics["mean_auroc"] == pytest.approx(np.mean(used), abs=1e-6)
    assert metrics["classes"]["Hernia"]["auroc"] is None
    json.dumps(metrics, allow_nan=False)  # no NaN anywhere


def test_chexnet_reference_covers_every_finding():
    assert set(CHEXNET_AUROC) == set(FINDINGS)
    assert CHEXNET_AUROC["Cardiomegaly"] == 0.9248


def _img_sources(html: str) -> set[str]:
    return set(re.findall(r"<img src='([^']+)'", html))


def test_report_html_references_every_png(tmp_path):
    rng = np.random.default_rng(10)
    y, probs, patients = _random_set(rng)
    y[:, FINDINGS.index("Hernia")] = 0
    th = choose_thresholds(y, probs, FINDINGS)
    metrics = compute_metrics(y, probs, patients, FINDINGS, th, n_boot=30).to_json()
    metrics |= {
        "model": {
            "weights": "m.safetensors",
            "architecture": "densenet-tiny",
            "ensemble": ["m"],
            "tta": True,
        },
        "dataset": {
            "description": "synthetic",
            "n_images": len(y),
            "n_patients": 90,
            "n_unreadable": 0,
            "origin": {"dataset": "NIH ChestX-ray14", "kind": "real"},
        },  # fmt: skip
        "thresholds": {
            "values": th,
            "method": "youden",
            "method_text": "Youden",
            "chosen_on": "val",
            "undefined": [],
        },
        "bootstrap": {"n_boot": 30, "seed": 0},
        "notes": [],
    }
    report = write_report(
        tmp_path,
        MetricsRecord.from_json(metrics),
        y,
        probs,
        FINDINGS,
        spread=rng.random(y.shape) * 0.1,
        spread_kind="tta",
    )
    html = report.read_text()
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert {"roc.png", "pr.png", "reliability.png", "prevalence.png", "uncertainty.png"} <= pngs
    assert _img_sources(html) == pngs
    assert "Hernia" in html and "left out of the mean" in html
    assert "random split reference" in html
    assert "NaN" not in html and "nan" not in html.replace("nance", "")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["classes"]["Hernia"]["auroc"] is None
