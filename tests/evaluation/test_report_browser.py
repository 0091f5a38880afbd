"""The report as a browser renders it (headless Chromium): its banners, and a screenshot as `make screenshots` takes it.

The README's picture comes from `make screenshots` on `make demo`'s real report; this test writes only to tmp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from testkit import save_screenshot

from cxrdx.evaluation.evaluate import compute_metrics
from cxrdx.evaluation.metrics_record import MetricsRecord
from cxrdx.evaluation.report import write_report
from cxrdx.labels import FINDINGS
from cxrdx.metrics.thresholds import choose_thresholds

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium"),
]


def _demo_like_report(out: Path) -> Path:
    """A report shaped like `make demo`'s: phantom model, phantom test split, one threshold never reached."""
    rng = np.random.default_rng(0)
    n = 300
    y = (rng.random((n, len(FINDINGS))) < 0.25).astype(np.int64)
    probs = np.clip(0.35 * y + 0.65 * rng.random(y.shape), 0, 1)
    patients = rng.integers(0, 120, n).astype(str)
    th = choose_thresholds(y, probs, FINDINGS)
    th["Emphysema"] = 0.99999988
    metrics = compute_metrics(y, probs, patients, FINDINGS, th, n_boot=50).to_json()
    metrics |= {
        "model": {"weights": "demo/run/model.safetensors", "architecture": "densenet121", "ensemble": ["m"],
                  "tta": False, "card": {"dataset": "cxrdx synthetic phantoms", "kind": "phantom"},
                  "evaluated_before": True},
        "dataset": {"description": "demo/cache (split test)", "n_images": n, "n_patients": 120, "n_unreadable": 0,
                    "origin": {"dataset": "cxrdx synthetic phantoms", "kind": "phantom"}},
        "thresholds": {"values": th, "method": "youden", "method_text": "Youden's J", "chosen_on": "demo/cache (split val)",
                       "undefined": []},
        "bootstrap": {"n_boot": 50, "seed": 0},
        "notes": [],
    }  # fmt: skip
    return write_report(out, MetricsRecord.from_json(metrics), y, probs, FINDINGS)


def test_report_renders_with_its_banners_and_is_screenshotted(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    report = _demo_like_report(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1500})
        page.goto(report.as_uri())
        expect(page.locator("p.banner").first).to_contain_text("Trained on synthetic phantoms")
        expect(page.locator("body")).not_to_contain_text("CheXNet")
        expect(page.locator("body")).to_contain_text("0.99999988")
        for img in page.locator("img").all():
            page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=img.element_handle())
        save_screenshot(
            page.screenshot(full_page=False), tmp_path / "shots" / "report.png"
        )  # the top of the page
        browser.close()
    assert (tmp_path / "shots" / "report.png").stat().st_size < 300_000
