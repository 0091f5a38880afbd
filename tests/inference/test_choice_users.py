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


def _cache_choice(ckpt, **fields) -> None:
    """Store a choice for ``ckpt`` as autotune does, under the default candidates' key."""
    sha = file_sha256(ckpt)
    threads = available_threads()
    names = choose.candidates(sha, "auto", "auto")
    tuned = autotune.Tuned(
        batch_size=4, threads=threads, workers=1, net_img_per_s=1.0, decode_ms=1.0, measured_s=0.1, **fields
    )
    autotune.save_cached(autotune.cache_key(cached_export_path(sha).name, names, threads), tuned)


@pytest.fixture
def cached_choice(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=64))
    save_checkpoint(ckpt, build_model("densenet-tiny").eval(), meta)
    assert Predictor.load(ckpt, backend="onnx").backend.startswith("onnx")  # writes the cached export
    assert cached_export_path(file_sha256(ckpt)).is_file()
    _cache_choice(ckpt, candidate="openvino fp32")
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


def test_a_small_predict_job_opens_the_backend_that_finishes_first(cached_choice, tmp_path):
    """OpenVINO is the faster network here but costs 5 s to open: one film goes to ONNX Runtime, 100 do
    not (0.01 + 100/10 = 10.01 s against 5 + 100/40 = 7.5 s); serve, which runs for long, opens OpenVINO."""
    from PIL import Image

    from cxrdx.jobs.predict import Config, run
    from cxrdx.jobs.serve import Config as ServeConfig
    from cxrdx.jobs.serve import run as serve

    _cache_choice(
        cached_choice,
        candidate="openvino fp32",
        rates={"onnx fp32": 10.0, "openvino fp32": 40.0},
        open_s={"onnx fp32": 0.01, "openvino fp32": 5.0},
    )
    film = tmp_path / "film.png"
    Image.new("L", (80, 64), 90).save(film)
    assert choose.load_args(str(cached_choice), "auto", "auto", available_threads(), 1) == ("onnx", "fp32")
    assert choose.load_args(str(cached_choice), "auto", "auto", available_threads(), 100) == (
        "openvino",
        "fp32",
    )
    one = run(Config(weights=cached_choice, paths=[film], out=tmp_path / "one.csv", format="csv"))
    assert one.backend.startswith("onnx")
    assert serve(ServeConfig(weights=cached_choice)).predictor.backend.startswith("openvino")
