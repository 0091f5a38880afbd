"""The Gradio app through a real `gradio_client` Client, plus its parts and `cxrdx serve`'s refusals."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image

from cxrdx.cli import main
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# gradio's own queue code trips pandas 3 deprecation warnings; not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

EVALUATION = {"dataset": "phantom test split", "auroc": {"Effusion": 0.912, "Mass": 0.733}}
PROVENANCE = {"dataset": "cxrdx phantoms", "epoch": 7}


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from cxrdx.inference.predictor import Predictor

    tmp = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    meta = CheckpointMeta(
        architecture="densenet-tiny",
        preprocessing=Preprocessing(size=64),
        thresholds={"Effusion": 0.0, "Hernia": 1.01},  # always positive / always negative
        threshold_method="test",
        provenance=PROVENANCE,
        evaluation=EVALUATION,
    )
    save_checkpoint(tmp / "m.safetensors", build_model("densenet-tiny"), meta)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDX_CACHE", str(tmp / "cache"))
        return Predictor.load(tmp / "m.safetensors")


@pytest.fixture(scope="module")
def client(predictor):
    from gradio_client import Client

    from cxrdx.app.ui import build_app, launch

    demo = build_app(predictor)
    _, url, _ = launch(demo, port=free_port(), block=False)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from cxrdx.phantom.render import make_phantom

    d = tmp_path_factory.mktemp("uploads")
    img, _ = make_phantom(np.random.default_rng(1), 128, ["Effusion"])
    Image.fromarray(img).save(d / "phantom.png")
    Image.fromarray(img).convert("RGB").save(d / "phantom.jpg", quality=95)
    (d / "notes.png").write_text("this is a text file renamed .png\n")
    (d / "cut.png").write_bytes((d / "phantom.png").read_bytes()[:300])  # truncated PNG
    Image.new("1", (8000, 7000)).save(d / "huge.png")  # 56 M pixels: refused from the header
    write_dicom(d / "ct.dcm", img, modality="CT")
    write_dicom(d / "cr", img, modality="CR")  # no suffix, as DICOMs often come
    return {p.name: p for p in d.iterdir()}


def write_dicom(path: Path, img: np.ndarray, modality: str) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=fm, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = modality, "PA", "CHEST"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(img, dtype=np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def api_predict(client, path: Path) -> dict:
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/predict")


# --------------------------------------------------------------------------- through a real client


def test_api_lists_predict_endpoint(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert "/predict" in api["named_endpoints"]


@pytest.mark.parametrize("name", ["phantom.png", "phantom.jpg", "cr"])
def test_api_predict_returns_every_finding_and_calls(client, files, predictor, name):
    result = api_predict(client, files[name])
    assert list(result["probabilities"]) == list(FINDINGS)
    assert result["positive"] == {"Effusion": True, "Hernia": False}
    assert result["thresholds"] == {"Effusion": 0.0, "Hernia": 1.01}
    assert "not a replacement for a clinician" in result["disclaimer"]
    assert result["error"] is None
    # the same numbers as the Python API on the same file
    want = predictor.predict(files[name])[0].probabilities
    assert result["probabilities"] == pytest.approx(want, abs=1e-6)


@pytest.mark.realdata
def test_api_predict_real_nih_image(client, shared_data, predictor):
    path = shared_data / "nih" / "images" / "00000100_000.png"  # one of the RGBA files
    result = api_predict(client, path)
    assert result["image"] == path.name
    assert result["probabilities"] == pytest.approx(predictor.predict(path)[0].probabilities, abs=1e-6)


@pytest.mark.parametrize(
    "name, message",
    [
        ("notes.png", "not an image file"),
        ("cut.png", "PNG"),
        ("huge.png", "too large"),
        ("ct.dcm", "modality is CT"),
    ],
)
def test_bad_uploads_get_a_clear_message_and_the_server_keeps_serving(client, files, name, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        api_predict(client, files[name])
    text = str(info.value)
    assert message in text and name in text
    assert "/tmp" not in text  # the user's file name, not the server's temp path
    assert list(api_predict(client, files["phantom.png"])["probabilities"]) == list(FINDINGS)


def test_uploads_over_the_size_limit_are_refused(predictor, files):
    from gradio_client import Client, handle_file

    from cxrdx.app.ui import build_app, launch

    small = build_app(predictor, max_file_size=2_000)
    _, url, _ = launch(small, port=free_port(), block=False)
    try:
        with pytest.raises(ValueError, match="exceeds the maximum file size"):
            Client(url, verbose=False).predict(handle_file(str(files["phantom.png"])), api_name="/predict")
    finally:
        small.close()


# --------------------------------------------------------------------------- parts


def test_analyzer_outputs_chart_overlays_and_table(predictor, files):
    from cxrdx.app.analyzer import Analyzer
    from cxrdx.app.components import findings_table, overlay_image, positives_markdown, probability_chart

    image, pred = Analyzer(predictor).predict(str(files["phantom.png"]))
    chart = probability_chart(pred, predictor.thresholds)
    assert chart.mode == "RGB" and chart.size[0] > 300
    overlay = overlay_image(image, predictor.explain(image, "Effusion"))
    assert overlay.size == (128, 128) and np.asarray(overlay).std() > 0
    table = findings_table(pred, predictor.thresholds)
    assert all(f"| {n} |" in table for n in FINDINGS)
    assert "**positive**" in table and "negative" in table
    assert "**Effusion**" in positives_markdown(pred)


def test_model_card_reports_training_evaluation_and_disclaimer(predictor):
    from cxrdx.app.components import DISCLAIMER, model_card

    card = model_card(predictor)
    assert DISCLAIMER in card
    assert "cxrdx phantoms" in card and "epoch: 7" in card
    assert "phantom test split" in card and "| Effusion | 0.912 |" in card and "| Mass | 0.733 |" in card


# --------------------------------------------------------------------------- CLI refusals


def test_serve_without_weights_explains_how_to_get_a_model(capsys):
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "--weights" in err and "make demo" in err and "cxrdx train" in err and "cxrdx import" in err


def test_serve_refuses_a_public_host_without_allow_remote(capsys, tmp_path):
    assert main(["serve", "--weights", str(tmp_path / "x.safetensors"), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_serve_reports_a_busy_port(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(
        ckpt, build_model("densenet-tiny"), CheckpointMeta("densenet-tiny", preprocessing=Preprocessing(64))
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--weights", str(ckpt), "--port", str(port), "--backend", "torch"]) == 2
    assert f"--port {port}" in capsys.readouterr().err


def test_status_html_escapes_what_comes_from_the_upload():
    """Issue 28 item 1 without a browser: names, warnings and refusals are text in the status HTML."""
    from corpus.hostile_headers import XSS

    from cxrdx.app.components import error_html, status_html

    ok = status_html(f"{XSS}.png", 64, 48, [f"modality is {XSS.upper()}"], f"out of distribution {XSS}")
    bad = error_html(f". x.dcm: unsupported transfer syntax {XSS}")
    for html_text in (ok, bad):
        assert "<img" not in html_text.lower() and "&lt;img src=x" in html_text.lower()
    assert ok.startswith("Analysed <b>") and "(64x48 px)" in ok and '<p class="error">' in ok
