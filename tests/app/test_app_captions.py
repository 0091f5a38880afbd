"""What the page says about a model and an image: banners, captions with the call, a colour bar, the request log."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image

from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.model.card import NO_EVALUATION_BANNER, PHANTOM_BANNER
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
CARD = {"dataset": "cxrdx synthetic phantoms", "kind": "phantom", "images": 90, "patients": 40,
        "split": {"train": 80, "val": 10}, "epochs": 2}  # fmt: skip


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from cxrdx.inference.predictor import Predictor

    tmp = tmp_path_factory.mktemp("captions")
    torch.manual_seed(0)
    meta = CheckpointMeta(
        architecture="densenet-tiny",
        preprocessing=Preprocessing(size=64),
        thresholds={"Effusion": 0.0, "Emphysema": 0.99999988},  # always positive / never reached
        threshold_method="test",
        model_card=CARD,
    )
    save_checkpoint(tmp / "m.safetensors", build_model("densenet-tiny"), meta)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDX_CACHE", str(tmp / "cache"))
        return Predictor.load(tmp / "m.safetensors")


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    from cxrdx.phantom.render import make_phantom

    path = tmp_path_factory.mktemp("up") / "Doe_John_1970-01-01.png"  # a name that must not be logged
    Image.fromarray(make_phantom(np.random.default_rng(1), 128, ["Effusion"])[0]).save(path)
    return path


def test_banners_name_a_phantom_model_no_evaluation_and_a_threshold_never_reached(predictor):
    from cxrdx.app.components import banners_html, model_card

    page = banners_html(predictor).replace("&#x27;", "'")
    assert PHANTOM_BANNER in page and NO_EVALUATION_BANNER.split("`")[0] in page
    assert "Emphysema 0.99999988" in page
    card = model_card(predictor)
    assert "cxrdx synthetic phantoms (phantom data)" in card and "90 images, 40 patients" in card


def test_overlays_carry_probability_threshold_call_and_a_colour_bar(predictor, upload):
    from cxrdx.app.analyzer import Analyzer
    from cxrdx.app.components import (
        CAPTIONED_MIN_SIDE,
        captioned_overlay,
        findings_table,
        overlay_caption,
        overlay_image,
    )

    image, pred = Analyzer(predictor).predict(str(upload))
    caption = overlay_caption(pred, "Effusion", predictor.thresholds)
    assert f"score {pred.probabilities['Effusion']:.2f}" in caption  # uncalibrated: a score
    assert caption.startswith("Effusion POSITIVE:") and caption.endswith("\u2265 threshold 0.000")
    never = overlay_caption(pred, "Emphysema", predictor.thresholds)
    assert never.startswith("Emphysema negative:") and never.endswith(
        "< threshold 0.99999988 (never reached)"
    )
    assert "no threshold" in overlay_caption(pred, "Mass", predictor.thresholds)
    plain = overlay_image(image, predictor.explain(image, "Effusion"))
    framed = np.asarray(captioned_overlay(image, predictor.explain(image, "Effusion"), caption))
    assert framed.shape[0] > plain.size[1] and framed.shape[1] > plain.size[0]  # caption strip + colour bar
    w = round(plain.size[0] * max(1.0, CAPTIONED_MIN_SIDE / max(plain.size)))  # small images are enlarged
    bar = framed[:, w + 6 : w + 10].astype(int)
    low, high = (
        bar[-40:-5].mean(axis=(0, 1)),
        bar[framed.shape[0] - w + 5 : framed.shape[0] - w + 40].mean((0, 1)),
    )
    assert (
        low[2] > 100 > low[0] and high[0] > 100 > high[2]
    )  # jet: blue (low) at the bottom, red (high) on top
    table = findings_table(pred, predictor.thresholds)
    assert "| 0.99999988 (never reached) |" in table and "1.000 |" not in table


def test_each_request_logs_one_line_without_patient_data(predictor, upload, caplog):
    from gradio_client import Client, handle_file

    from cxrdx.app.ui import build_app, launch

    demo = build_app(predictor)
    _, url, _ = launch(demo, port=free_port(), block=False)
    caplog.set_level(logging.INFO, logger="cxrdx.app")
    try:
        client = Client(url, verbose=False)
        result = client.predict(handle_file(str(upload)), api_name="/predict")
        assert result["model_card"]["kind"] == "phantom" and PHANTOM_BANNER in result["model_warnings"]
        bad = upload.with_name("notes.png")
        bad.write_text("not an image\n")
        with pytest.raises(Exception):  # noqa: B017, PT011 - gradio_client's AppError
            client.predict(handle_file(str(bad)), api_name="/predict")
    finally:
        demo.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "cxrdx.app"]
    assert len(lines) == 2, lines
    ok, refused = lines
    size = upload.stat().st_size
    assert ok.startswith("request endpoint=api/predict type=PNG") and f"bytes={size}" in ok
    assert "latency_ms=" in ok and ok.endswith("outcome=ok")
    assert "type=other" in refused and refused.endswith("outcome=refused")
    assert not any("Doe" in line or "notes" in line for line in lines)
