"""`make screenshots` owns docs/images: it refuses without the demo's outputs, and no test writes there."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("cxrdx_screenshots", REPO / "scripts" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_screenshots_need_the_demo_outputs(tmp_path, capsys):
    assert _script().main([str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "make demo" in err


def test_no_test_names_docs_images():
    """Screenshots in tests go to tmp paths; only scripts/screenshots.py writes the README's pictures."""
    pattern = re.compile(r"""["']docs["']\s*/\s*["']images["']|docs/images/\w+\.png""")
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "tests").rglob("*.py")
        if p.name != Path(__file__).name and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_save_screenshot_shrinks_under_the_limit(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    noise = (np.random.default_rng(0).random((900, 1600, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    _script().save_screenshot(buf.getvalue(), tmp_path / "shot.png", max_bytes=200_000)
    shot = Image.open(tmp_path / "shot.png")
    assert shot.width <= 1200 and (tmp_path / "shot.png").stat().st_size <= 200_000
