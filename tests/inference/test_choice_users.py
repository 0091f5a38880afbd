"""``cxrdx serve`` and ``cxrdx listen`` open the backend and precision ``cxrdx predict`` chose and cached.

The cached choice is written here as autotune stores it (``autotune.save_cached``), naming a
candidate that is not the default (OpenVINO fp32), so opening it shows it was read.
"""

from __future__ import annotations

import pytest
import torch

from cxrdx.device import available_threads
from cxrdx.files import file_sha256
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference import autotune, choose
from cxrdx.inference.export import cached_export_path
from cxrdx.inference.predictor import Predictor
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model


@pytest.fixture
def cached_choice(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=64))
    save_checkpoint(ckpt, build_model("densenet-tiny").eval(), meta)
    assert Predictor.load(ckpt, backend="onnx").backend.startswith("onnx")  # writes the cached export
    sha = file_sha256(ckpt)
    assert cached_export_path(sha).is_file()
    threads = available_threads()
    names = choose.candidates(sha, "auto", "auto")
    tuned = autotune.Tuned(
        batch_size=4, threads=threads, workers=1, net_img_per_s=1.0, decode_ms=1.0, measured_s=0.1,
        candidate="openvino fp32",
    )  # fmt: skip
    autotune.save_cached(autotune.cache_key(cached_export_path(sha).name, names, threads), tuned)
    return ckpt


def test_serve_opens_predicts_cached_choice(cached_choice):
    from cxrdx.jobs.serve import Config, run

    result = run(Config(weights=cached_choice))
    assert result.predictor.backend.startswith("openvino")
    fp32 = run(Config(weights=cached_choice, precision="fp32", backend="onnx"))  # control: asked by name
    assert fp32.predictor.backend.startswith("onnx")


def test_listen_opens_predicts_cached_choice_and_captures_maps(cached_choice):
    from cxrdx.inference.heatmaps import CamCapture
    from cxrdx.jobs.listen import load_predictor

    predictor = load_predictor(cached_choice, "auto", "auto", "cpu", available_threads())
    assert predictor.backend.startswith("openvino")
    assert isinstance(predictor.session, CamCapture)
    assert load_predictor(cached_choice, "onnx", "fp32", "cpu", available_threads()).backend.startswith(
        "onnx"
    )
