"""`make screenshots`: the README's pictures of the app and the report, taken from `make demo`'s real outputs.

    python scripts/screenshots.py [DEMO_DIR [OUT_DIR]]    # defaults: demo, docs/images

Needs `make demo` first (DEMO_DIR/run/model.safetensors, DEMO_DIR/report/report.html and
DEMO_DIR/split/test.csv) and Debian's Chromium at /usr/bin/chromium. Writes
docs/images/app.png (the web app on a test phantom with a finding) and docs/images/report.png
(the top of the evaluation report). Tests never write into docs/: they check `save_screenshot`
on temporary paths, so `make test` leaves the tree as it found it.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS_IMAGES = REPO / "docs" / "images"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def save_screenshot(png: bytes, dest, max_bytes: int = 300_000, width: int = 1200) -> None:
    """A browser screenshot as a small PNG for docs/ (palette colours, shrunk until under max_bytes)."""
    from PIL import Image

    from cxrdx.files import atomic_write

    shot = Image.open(io.BytesIO(png)).convert("RGB")
    scale = min(1.0, width / shot.width)
    while True:
        size = (max(1, round(shot.width * scale)), max(1, round(shot.height * scale)))
        small = shot.resize(size, Image.Resampling.LANCZOS) if scale < 1 else shot
        buf = io.BytesIO()
        small.quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(buf, "PNG", optimize=True)
        if buf.tell() <= max_bytes or scale < 0.3:
            break
        scale *= 0.85
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    Path(dest).chmod(0o644)  # a docs file, readable by all (the temp file was private)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _test_image(demo: Path, finding: str = "Effusion") -> Path:
    """The first test-split phantom labelled with ``finding`` (any test phantom if none is)."""
    with open(demo / "split" / "test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SystemExit(f"{demo}/split/test.csv lists no images; run make demo first")
    row = next((r for r in rows if r.get(finding) in ("1", "1.0")), rows[0])
    return demo / "phantoms" / "images" / row["image"]


def report_png(browser, demo: Path, out_dir: Path = DOCS_IMAGES) -> Path:
    report = demo / "report" / "report.html"
    page = browser.new_page(viewport={"width": 1200, "height": 1500})
    page.goto(report.resolve().as_uri())
    for img in page.locator("img").all():
        page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=img.element_handle())
    save_screenshot(page.screenshot(full_page=False), out_dir / "report.png")  # the top of the page
    page.close()
    return out_dir / "report.png"


def app_png(browser, demo: Path, out_dir: Path = DOCS_IMAGES) -> Path:
    from playwright.sync_api import expect

    image = _test_image(demo)
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    cmd = [sys.executable, "-m", "cxrdx", "serve", "--weights", str(demo / "run" / "model.safetensors")]
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"cxrdx serve exited with {proc.returncode}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"cxrdx serve did not answer on {url}") from None
                time.sleep(0.5)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.locator("input[type=file]").set_input_files(str(image))
        expect(page.locator("#cxrdx-status")).to_contain_text(f"Analysed {image.name}", timeout=120_000)
        heatmaps = page.locator("#cxrdx-gallery img")
        expect(heatmaps.first).to_be_visible(timeout=60_000)
        for k in range(heatmaps.count()):
            heatmaps.nth(k).scroll_into_view_if_needed()
            page.wait_for_function(
                "i => i.complete && i.naturalWidth > 0", arg=heatmaps.nth(k).element_handle()
            )
        page.evaluate("window.scrollTo(0, 0)")
        save_screenshot(page.screenshot(full_page=True), out_dir / "app.png")
        page.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return out_dir / "app.png"


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    demo = Path(argv[0] if argv else "demo")
    out_dir = Path(argv[1]) if len(argv) > 1 else DOCS_IMAGES
    needed = [
        demo / "run" / "model.safetensors",
        demo / "report" / "report.html",
        demo / "split" / "test.csv",
    ]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"screenshots: missing {', '.join(missing)}; run `make demo` first", file=sys.stderr)
        return 2
    if not CHROMIUM.exists():
        print(f"screenshots: no {CHROMIUM}; run scripts/ensure_chromium.sh", file=sys.stderr)
        return 2
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for made in (report_png(browser, demo, out_dir), app_png(browser, demo, out_dir)):
                print(f"wrote {made} ({made.stat().st_size:,} bytes)")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
