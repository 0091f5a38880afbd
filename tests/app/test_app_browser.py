"""End to end in a real headless Chromium: `cxrdx serve` as a subprocess, uploads through the page."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image
from testkit import save_screenshot

from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEMO_CARD = {"dataset": "cxrdx synthetic phantoms", "kind": "phantom", "images": 1200, "patients": 540,
             "split": {"train": 1050, "val": 150}, "epochs": 1}  # fmt: skip
SERVER_LOG: list[Path] = []  # the server's stderr, for the request-log test
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`cxrdx serve` on a free loopback port (the real CLI), until the module's tests end."""
    tmp = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    meta = (
        CheckpointMeta(  # as `make demo` leaves it: phantom-trained, evaluated, one threshold never reached
            architecture="densenet-tiny",
            preprocessing=Preprocessing(size=64),
            thresholds={"Effusion": 0.0, "Emphysema": 0.99999988, "Mass": 0.5},
            threshold_method="youden",
            model_card=DEMO_CARD,
            evaluation={
                "dataset": "demo/cache (split test)",
                "auroc": {"Effusion": 0.71},
                "mean_auroc": 0.68,
            },
        )
    )
    save_checkpoint(tmp / "m.safetensors", build_model("densenet-tiny"), meta)
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", CXRDX_CACHE=str(tmp / "cache"))
    SERVER_LOG.append(tmp / "serve.log")
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxrdx",
            "serve",
            "--weights",
            str(tmp / "m.safetensors"),
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"cxrdx serve exited with {proc.returncode}: {(tmp / 'serve.log').read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"cxrdx serve did not answer on {url}: {(tmp / 'serve.log').read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture()
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        outside: list[str] = []
        page.on(
            "request", lambda r: outside.append(r.url) if not r.url.startswith(("data:", server)) else None
        )
        page.goto(server)
        yield page
        browser.close()
    assert outside == [], f"the page tried to reach the internet: {outside}"


def upload(page, path: Path) -> None:
    """Clear a previous upload if any, then choose the file in the upload component."""
    clear = page.get_by_label("Clear")
    if page.locator("input[type=file]").count() == 0 and clear.count():
        clear.first.click()
    page.locator("input[type=file]").set_input_files(str(path))


def expect_results(page, name: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#cxrdx-status")).to_contain_text(f"Analysed {name}", timeout=60_000)
    table = page.locator("#cxrdx-table")
    for finding in FINDINGS:
        expect(table).to_contain_text(finding)
    expect(page.locator("#cxrdx-positives")).to_contain_text("Effusion")
    heatmaps = page.locator("#cxrdx-gallery img")
    expect(heatmaps).to_have_count(3, timeout=30_000)
    for k in range(3):
        heatmaps.nth(k).scroll_into_view_if_needed()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=heatmaps.nth(k).element_handle()
        )
    expect(page.locator("#cxrdx-picked img")).to_have_count(1)


def test_phantom_then_bad_file_then_recovers(page, tmp_path):
    from playwright.sync_api import expect

    from cxrdx.phantom.render import make_phantom

    phantom = tmp_path / "phantom.png"
    Image.fromarray(make_phantom(np.random.default_rng(5), 256, ["Effusion"])[0]).save(phantom)
    bogus = tmp_path / "report.png"
    bogus.write_text("Impression: no acute cardiopulmonary process.\n")

    upload(page, phantom)
    expect_results(page, "phantom.png")
    expect(page.locator("#cxrdx-banners")).to_contain_text("Trained on synthetic phantoms")
    expect(page.locator("#cxrdx-gallery")).to_contain_text("threshold")
    expect(page.locator("#cxrdx-picked")).to_contain_text("Grad-CAM")  # the picked heatmap is captioned
    expect(page.locator("#cxrdx-table")).to_contain_text("0.99999988 (never reached)")
    page.screenshot(path=str(tmp_path / "phantom.screenshot.png"), full_page=True)
    save_screenshot(
        page.screenshot(full_page=True), tmp_path / "shots" / "app.png"
    )  # README's: make screenshots
    assert (tmp_path / "shots" / "app.png").stat().st_size < 300_000

    upload(page, bogus)
    status = page.locator("#cxrdx-status")
    expect(status).to_contain_text("Could not analyse this file", timeout=60_000)
    expect(status).to_contain_text("report.png: not an image file")
    expect(page.locator("#cxrdx-gallery img")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "error.screenshot.png"), full_page=True)

    upload(page, phantom)  # the server kept serving and the page still works
    expect_results(page, "phantom.png")


@pytest.mark.realdata
def test_real_nih_image_and_picking_a_finding(page, shared_data, tmp_path):
    from playwright.sync_api import expect

    real = shared_data / "nih" / "images" / "00000100_000.png"
    upload(page, real)
    expect_results(page, real.name)
    picked = page.locator("#cxrdx-picked img")
    before = picked.get_attribute("src")
    page.locator("#cxrdx-pick input").click()
    page.get_by_role("option", name="Hernia").click()
    expect(picked).not_to_have_attribute("src", before or "", timeout=30_000)
    page.screenshot(path=str(tmp_path / "real.screenshot.png"), full_page=True)


def test_model_card_and_disclaimer_are_on_the_page(page):
    from playwright.sync_api import expect

    expect(page.get_by_text("not a replacement for a clinician").first).to_be_visible()
    page.get_by_text("Model card").click()
    card = page.locator("#cxrdx-model-card")
    expect(card).to_contain_text("densenet-tiny")
    expect(card).to_contain_text("Thresholds")


def test_the_server_logs_one_line_per_request_without_file_names(page, tmp_path):
    from playwright.sync_api import expect

    from cxrdx.phantom.render import make_phantom

    secret = tmp_path / "Doe_Jane_MRN123.png"
    Image.fromarray(make_phantom(np.random.default_rng(2), 128, ["Mass"])[0]).save(secret)
    upload(page, secret)
    expect(page.locator("#cxrdx-status")).to_contain_text("Analysed", timeout=60_000)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [x for x in SERVER_LOG[0].read_text().splitlines() if "request endpoint=" in x]
        if any(f"bytes={secret.stat().st_size}" in x for x in lines):
            break
        time.sleep(0.2)
    mine = [x for x in lines if f"bytes={secret.stat().st_size}" in x]
    assert len(mine) == 1 and "endpoint=page type=PNG" in mine[0] and "outcome=ok" in mine[0], lines
    assert "latency_ms=" in mine[0] and mine[0][:4].isdigit()  # starts with the time
    assert "Doe" not in SERVER_LOG[0].read_text()


def test_markup_in_dicom_headers_and_file_names_is_shown_as_text(page, tmp_path):
    """Issue 28 item 1: five header values and the file name reach the status HTML; none may run script."""
    from corpus.hostile_headers import xss_files
    from playwright.sync_api import expect

    status = page.locator("#cxrdx-status")
    for name, (path, shown) in xss_files(tmp_path).items():
        upload(page, path)
        expect(status).to_contain_text(shown, timeout=60_000)  # the markup as text, not as an element
        expect(status.locator("img")).to_have_count(0)
        page.wait_for_timeout(300)  # an <img src=x> fails to load at once and would fire onerror
        assert page.evaluate("window.__xss") is None, f"{name}: script ran in the page"
