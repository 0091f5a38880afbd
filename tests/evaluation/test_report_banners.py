"""The report's honesty: phantom banners, CheXNet's real-data column only for real data, thresholds never reached."""

from __future__ import annotations

import numpy as np

from cxrdx.evaluation.evaluate import compute_metrics
from cxrdx.evaluation.metrics_record import MetricsRecord
from cxrdx.evaluation.report import render_html
from cxrdx.labels import FINDINGS
from cxrdx.metrics.thresholds import choose_thresholds
from cxrdx.model.card import PHANTOM_BANNER


def _metrics(kind: str, model_kind: str = "phantom", evaluated_before: bool = False) -> MetricsRecord:
    rng = np.random.default_rng(3)
    y = (rng.random((200, len(FINDINGS))) < 0.3).astype(np.int64)
    probs = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0, 1)
    patients = rng.integers(0, 60, len(y)).astype(str)
    th = choose_thresholds(y, probs, FINDINGS)
    th["Emphysema"] = 0.99999988  # practically never reached
    metrics = compute_metrics(y, probs, patients, FINDINGS, th, n_boot=10).to_json()
    return MetricsRecord.from_json(metrics | {
        "model": {"weights": "m.safetensors", "architecture": "densenet-tiny", "ensemble": ["m"], "tta": False,
                  "card": {"dataset": "cxrdx synthetic phantoms", "kind": model_kind},
                  "evaluated_before": evaluated_before},
        "dataset": {"description": "demo/cache (split test)", "n_images": len(y), "n_patients": 60,
                    "n_unreadable": 0, "origin": {"dataset": "x", "kind": kind}},
        "thresholds": {"values": th, "method": "youden", "method_text": "Youden", "chosen_on": "val",
                       "undefined": []},
        "bootstrap": {"n_boot": 10, "seed": 0},
        "notes": [],
    })  # fmt: skip


def test_phantom_results_show_banners_and_no_chexnet_column():
    html = render_html(_metrics("phantom"), [])
    assert PHANTOM_BANNER in html.replace("&#x27;", "'")
    assert "Test data: synthetic phantoms" in html
    assert "CheXNet" not in html  # no real-data reference beside phantom AUROCs
    assert "records no evaluation" in html


def test_real_results_keep_the_chexnet_column():
    html = render_html(_metrics("real", model_kind="real", evaluated_before=True), [])
    assert "CheXNet AUROC" in html and "CheXNet reference over the same classes" in html
    assert "banner" not in html.split("<body>")[1].split("<h2>")[0].replace(".banner", "")
    header = html.split("<thead>")[1].split("</thead>")[0]
    row = html.split("<tbody>")[1].split("</tr>")[0]
    assert header.count("<th") == row.count("<td")  # the column is in the header and in every row


def test_a_threshold_never_reached_is_flagged_with_enough_digits():
    html = render_html(_metrics("real"), [])
    assert "0.99999988 <b" in html and "(never reached)" in html
    assert "1.0000" not in html
    assert "Threshold effectively never reached: Emphysema 0.99999988" in html


def test_the_evaluate_summary_follows_the_report():
    from cxrdx.cli.evaluate import format_summary

    phantom = format_summary(_metrics("phantom"))
    assert "CheXNet*" not in phantom and "no real-data reference (CheXNet)" in phantom
    assert "0.99999988 (never reached)" in phantom
    assert "CheXNet*" in format_summary(_metrics("real", model_kind="real"))
