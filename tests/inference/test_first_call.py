"""A fast first `cxrdx predict`: the export is made when a checkpoint is written, or in the background."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import run_cli

from cxrdx.cli.console import ConsoleReporter
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference import export
from cxrdx.inference.backends import onnxruntime_available
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model

pytestmark = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))


def _ckpt(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=32))
    save_checkpoint(path, build_model("densenet-tiny"), meta)
    return path


def _image(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(path)
    return path


def test_prepare_export_fills_the_cache_once(tmp_path, capsys, monkeypatch):
    ckpt = _ckpt(tmp_path / "a.safetensors", 0)
    assert not export.is_exported(ckpt)
    monkeypatch.setenv("CXRDX_EXPORT_ON_WRITE", "0")
    export.prepare_export_note("train", ckpt, ConsoleReporter("train"))
    assert not export.is_exported(ckpt)
    monkeypatch.delenv("CXRDX_EXPORT_ON_WRITE")
    export.prepare_export_note("train", ckpt, ConsoleReporter("train"))
    assert export.is_exported(ckpt) and "ONNX export of a.safetensors cached" in capsys.readouterr().err
    assert export.prepare_export(ckpt) is False  # already there
    rc, _, err = run_cli(
        capsys, ["predict", "--weights", ckpt, _image(tmp_path / "x.png"), "--format", "csv"]
    )
    assert rc == 0 and "(backend onnx)" in err


def test_first_small_job_runs_on_torch_and_exports_in_the_background(tmp_path, capsys):
    ckpt = _ckpt(tmp_path / "b.safetensors", 1)
    image = _image(tmp_path / "x.png")
    rc, first, err = run_cli(capsys, ["predict", "--weights", ckpt, image, "--format", "csv"])
    assert rc == 0 and "(backend torch)" in err
    deadline = time.monotonic() + 240
    while not export.is_exported(ckpt) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert export.is_exported(ckpt), "the background export did not finish"
    rc, again, err = run_cli(capsys, ["predict", "--weights", ckpt, image, "--format", "csv"])
    assert rc == 0 and "(backend onnx)" in err
    a = np.array(first.splitlines()[1].split(",")[2:16], dtype=float)
    b = np.array(again.splitlines()[1].split(",")[2:16], dtype=float)
    np.testing.assert_allclose(a, b, atol=1e-5)
