"""`cxrdx predict` on an exported checkpoint starts light: ONNX Runtime only, no MONAI, no torch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference.backends import onnxruntime_available
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model

HEAVY = ("monai", "torch", "pandas", "matplotlib", "gradio")


def _imported(stderr: str) -> set[str]:
    """Top-level packages in `python -X importtime` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_onnx_predict_imports_no_monai_or_torch_once_exported(tmp_path):
    import pytest

    if not onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, build_model("densenet-tiny"), CheckpointMeta(architecture="densenet-tiny",
                    preprocessing=Preprocessing(size=32)))  # fmt: skip
    image = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(image)
    env = dict(os.environ, CXRDX_CACHE=str(tmp_path / "cache"))
    argv = [sys.executable, "-X", "importtime", "-m", "cxrdx", "predict", "--weights", str(ckpt), str(image),
            "--backend", "onnx", "--format", "csv"]  # fmt: skip
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "monai" in _imported(first.stderr)  # the first run exports: that needs the network
    warm = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr[-2000:]
    assert not set(HEAVY) & _imported(warm.stderr), sorted(set(HEAVY) & _imported(warm.stderr))
    assert "onnxruntime" in _imported(warm.stderr)
    assert warm.stdout == first.stdout  # the same numbers


def test_a_missing_image_is_named_once(tmp_path, capsys):
    from testkit import run_cli

    rc, _, err = run_cli(capsys, ["predict", "--weights", tmp_path / "no.safetensors", tmp_path / "gone.png"])
    assert rc == 2 and err.count("gone.png") == 1, err
