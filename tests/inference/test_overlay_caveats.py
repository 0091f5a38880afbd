"""Issue 26 §1: `cxrdx explain`, `predict --heatmaps` and the app's downloadable overlays print and burn in
the same caveats as `predict`: a demo model's stamp, and OUT OF DISTRIBUTION for a foreign image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from testkit import png_bytes, run_cli, tiny_checkpoint

from cxrdx.inference.prediction import Prediction
from cxrdx.model.checkpoint import update_checkpoint_meta


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory):
    """A phantom-trained, never-evaluated tiny checkpoint whose OOD threshold flags every image."""
    from cxrdx.model.ood import fit_ood_into_checkpoint
    from cxrdx.phantom.render import make_phantom

    path = tiny_checkpoint(
        tmp_path_factory.mktemp("demo") / "demo.safetensors",
        model_card={"dataset": "cxrdx synthetic phantoms", "kind": "phantom"},
    )
    rng = np.random.default_rng(0)
    phantoms = [make_phantom(rng, 32, [])[0].astype(np.float32) / 255 for _ in range(8)]
    fit_ood_into_checkpoint(path, phantoms[:5], phantoms[5:])
    update_checkpoint_meta(path, lambda m: setattr(m, "ood", {**m.ood, "threshold": 0.0}))
    return path


@pytest.fixture()
def film(tmp_path):
    path = tmp_path / "film.png"
    path.write_bytes(png_bytes(np.random.default_rng(2).integers(0, 256, (96, 96), dtype=np.uint8)))
    return path


def _red_rows(png, rows: slice) -> int:
    """Strongly red pixels (the caveats' colour) in some rows of a picture."""
    a = np.asarray(Image.open(png).convert("RGB"), dtype=np.int32)[rows]
    return int(((a[..., 0] > 150) & (a[..., 1] < 90) & (a[..., 2] < 90)).sum())


def test_explain_prints_and_burns_in_the_caveats(demo_ckpt, film, tmp_path, capsys):
    rc, _, err = run_cli(
        capsys, ["explain", film, "--weights", demo_ckpt, "--out", tmp_path / "o", "--top-k", "1", "-q"]
    )
    assert rc == 0
    assert "WARNING: Trained on synthetic phantoms" in err and "No evaluation is recorded" in err
    assert "OUT OF DISTRIBUTION" in err and "film.png" in err
    (png,) = (tmp_path / "o").glob("*.png")
    height = Image.open(png).height
    assert _red_rows(png, slice(height - height // 6, None)) > 50  # the red caveat lines under the picture


def test_predict_heatmaps_burn_in_the_caveats(demo_ckpt, film, tmp_path, capsys):
    rc, _, _ = run_cli(capsys, ["predict", "--weights", demo_ckpt, film, "--heatmaps", tmp_path / "h"])
    pngs = sorted((tmp_path / "h").glob("*.png"))
    assert rc == 0 and pngs
    height = Image.open(pngs[0]).height
    assert _red_rows(pngs[0], slice(height - height // 6, None)) > 50


def test_overlay_png_without_caveats_has_no_red_text(tmp_path):
    from cxrdx.explain.overlay import overlay_png

    image = np.full((64, 64), 0.5, np.float32)
    plain = overlay_png(image, np.zeros_like(image), tmp_path / "plain.png", "title")
    stamped = overlay_png(
        image, np.zeros_like(image), tmp_path / "s.png", "title", caveats=["DEMO MODEL (x)"]
    )
    h_plain, h_stamped = Image.open(plain).height, Image.open(stamped).height
    assert h_stamped > h_plain
    assert _red_rows(plain, slice(h_plain - h_plain // 6, None)) == 0
    assert _red_rows(stamped, slice(h_stamped - h_stamped // 6, None)) > 20


def test_app_overlay_burns_in_the_caveats(demo_ckpt):
    pytest.importorskip("gradio")
    from cxrdx.app.components import captioned_overlay
    from cxrdx.inference.formats import overlay_caveats
    from cxrdx.inference.predictor import Predictor

    predictor = Predictor.load(demo_ckpt, backend="torch")
    pred = predictor.predict([np.random.default_rng(3).random((64, 64)).astype(np.float32)], workers=0)[0]
    caveats = overlay_caveats(predictor, pred)
    assert caveats[0].startswith("DEMO MODEL") and caveats[1].startswith("OUT OF DISTRIBUTION")
    image, heat = np.full((64, 64), 0.5, np.float32), np.zeros((64, 64), np.float32)
    plain = np.asarray(captioned_overlay(image, heat, "Mass: p 0.10"))
    stamped = np.asarray(captioned_overlay(image, heat, "Mass: p 0.10", caveats))
    red = (stamped[..., 0] > 150) & (stamped[..., 1] < 90) & (stamped[..., 2] < 90)
    strip = stamped.shape[0] - plain.shape[0]  # the image body is the same; the caption strip grew
    assert strip > 0 and red[: strip + 40].sum() > 50
    assert overlay_caveats(predictor, Prediction("x", {}, in_distribution=True)) == caveats[:1]
