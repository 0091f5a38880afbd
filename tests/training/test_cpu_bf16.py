"""bf16 autocast training on CPU (``--amp bf16``): what it runs in, what it saves, and that it resumes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_train import make_toy_cache, tiny_config

from cxrdx.errors import ConfigError
from cxrdx.model.checkpoint import read_checkpoint
from cxrdx.training import runtime
from cxrdx.training.config import LAST_FILE, STATE_FILE
from cxrdx.training.loop import train

CPU = torch.device("cpu")


def test_cpu_amp_choice(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "c", tmp_path / "r")
    assert runtime.choose_amp_dtype(replace(cfg, amp="bf16"), CPU) is torch.bfloat16
    assert runtime.choose_amp_dtype(replace(cfg, amp="off"), CPU) is None
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        runtime.choose_amp_dtype(replace(cfg, amp="fp16"), CPU)
    # auto: bf16 only where adopted for CPUs and this CPU has it in hardware
    monkeypatch.setattr(runtime, "CPU_AUTO_BF16", True)
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    assert runtime.choose_amp_dtype(replace(cfg, amp="auto"), CPU) is None
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    assert runtime.choose_amp_dtype(replace(cfg, amp="auto"), CPU) is torch.bfloat16
    monkeypatch.setattr(runtime, "CPU_AUTO_BF16", False)
    assert runtime.choose_amp_dtype(replace(cfg, amp="auto"), CPU) is None


def test_bf16_needs_the_cpu_flags(monkeypatch):
    import cxrdx.device

    monkeypatch.setattr(cxrdx.device, "cpu_info", lambda: ("an AVX2 CPU", frozenset({"avx2", "avx512f"})))
    assert runtime.cpu_bf16_native() is False


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_cache(tmp_path_factory.mktemp("bf16") / "cache")


def test_bf16_training_runs_in_bf16_saves_fp32_and_resumes(toy, tmp_path):
    fp32 = train(tiny_config(toy, tmp_path / "fp32", epochs=2, amp="off"))
    bf16 = train(tiny_config(toy, tmp_path / "bf16", epochs=2, amp="bf16"))
    w32, _ = read_checkpoint(fp32.last_path)
    w16, _ = read_checkpoint(bf16.last_path)
    assert all(t.dtype == torch.float32 for t in w16.values() if t.is_floating_point())
    # the same seed and data: only the forward's precision differs, so the weights must too
    assert any(not torch.equal(w32[k], w16[k]) for k in w32 if w32[k].is_floating_point())
    assert all(torch.isfinite(t).all() for t in w16.values() if t.is_floating_point())
    state = torch.load(tmp_path / "bf16" / STATE_FILE, weights_only=True)
    moments = [v for s in state["optimizer"]["state"].values() for v in s.values() if torch.is_tensor(v)]
    assert moments and all(m.dtype == torch.float32 for m in moments if m.is_floating_point())
    resumed = train(tiny_config(toy, tmp_path / "bf16", epochs=3, amp="bf16"), resume=True)
    assert resumed.epochs_completed == 3
    assert (tmp_path / "bf16" / LAST_FILE).is_file()
