"""`inference_device`: the answer `choose_device` gives, without importing torch where it cannot differ."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cxrdx import device


def test_cpu_and_auto_without_gpu_nodes_skip_torch(monkeypatch):
    monkeypatch.setattr(device, "no_gpu_possible", lambda: True)
    monkeypatch.setattr(device, "choose_device", lambda *a, **k: pytest.fail("torch route taken"))
    assert device.inference_device("cpu") == "cpu" and device.inference_device("auto") == "cpu"


def test_auto_with_a_possible_gpu_and_named_devices_ask_torch(monkeypatch):
    asked = []
    monkeypatch.setattr(device, "no_gpu_possible", lambda: False)
    monkeypatch.setattr(device, "choose_device", lambda name, local_rank=0: asked.append(name) or name)
    assert device.inference_device("auto") == "auto" and device.inference_device("cuda:1") == "cuda:1"
    assert asked == ["auto", "cuda:1"]


def test_no_gpu_possible_agrees_with_torch_here():
    torch = pytest.importorskip("torch")
    if device.no_gpu_possible():
        assert not torch.cuda.is_available()
    assert str(device.choose_device("auto")) == str(device.inference_device("auto"))


def test_inference_device_imports_no_torch():
    code = "import sys; from cxrdx.device import inference_device; inference_device('cpu'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
