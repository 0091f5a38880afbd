"""Autotuned batch size and threads: measured once per machine and model, cached, and escapable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import run_cli

from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference import autotune
from cxrdx.inference.backends import onnxruntime_available
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "MIN_SECONDS", 0.01)
    monkeypatch.setattr(autotune, "_load", lambda: 0.5)  # a quiet machine, whatever the real load


class FakeClock:
    """time.perf_counter for autotune that only the fake network and decoder move: no timing noise."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(autotune, "time", fake)
    return fake


def fake_network(clock: FakeClock, per_image_s: dict[int, float]):
    """run(session, x) that takes per_image_s[batch] seconds per image; sessions remember their threads."""
    made = []

    def make(threads: int) -> dict:
        made.append(threads)
        return {"threads": threads}

    def run(session: dict, x: np.ndarray) -> None:
        clock.sleep(len(x) * per_image_s.get(len(x), 0.004) * (1.0 if session["threads"] > 1 else 1.5))

    return make, run, made


def test_measure_picks_the_fastest_batch_and_threads(clock):
    make, run, made = fake_network(clock, {1: 0.006, 2: 0.005, 4: 0.002, 8: 0.004})
    tuned = autotune.measure(make, run, (1, 4, 4), decode=lambda: clock.sleep(0.003), cores=2)
    assert tuned.batch_size == 4 and tuned.threads == 2 and made == [2, 1]
    assert (
        tuned.workers == 1
        and tuned.decode_ms == pytest.approx(3.0)
        and tuned.net_img_per_s == pytest.approx(200)  # 2 + 3 ms per image
    )


def test_settings_are_cached_per_machine_and_model(clock):
    make, run, made = fake_network(clock, {})
    first, fresh = autotune.tuned_for("model-a", make, run, (1, 4, 4), None, cores=2)
    assert fresh and made
    made.clear()
    again, fresh = autotune.tuned_for("model-a", make, run, (1, 4, 4), None, cores=2)
    assert not fresh and not made and again == first
    none, fresh = autotune.tuned_for("model-b", make, run, (1, 4, 4), None, cores=2, measure_now=False)
    assert none is None and not fresh and not made  # a small job does not pay for measuring
    assert autotune.machine_key() == autotune.machine_key()


def test_a_choice_made_on_a_busy_machine_is_measured_again_when_quiet(clock, monkeypatch):
    make, run, made = fake_network(clock, {})
    monkeypatch.setattr(autotune, "_load", lambda: 9.0)
    busy, fresh = autotune.tuned_for("model-c", make, run, (1, 4, 4), None, cores=2)
    assert fresh and busy.load == 9.0
    assert autotune.tuned_for("model-c", make, run, (1, 4, 4), None, cores=2)[1] is False  # still busy
    monkeypatch.setattr(autotune, "_load", lambda: 0.5)
    quiet, fresh = autotune.tuned_for("model-c", make, run, (1, 4, 4), None, cores=2)
    assert fresh and quiet.load == 0.5


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
def test_cli_tunes_once_then_uses_the_cache_and_can_be_turned_off(tmp_path, capsys, monkeypatch):
    from cxrdx.jobs import predict_batch as predict_job

    monkeypatch.setattr(predict_job, "AUTOTUNE_MIN_IMAGES", 4)
    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(
        ckpt,
        build_model("densenet-tiny"),
        CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=32)),
    )
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / f"{i}.png")
    argv = ["predict", "--weights", ckpt, folder, "--format", "csv", "--backend", "onnx"]
    rc, out1, err = run_cli(capsys, argv)
    assert rc == 0 and "autotune: batch" in err and "measured in" in err
    rc, out2, err = run_cli(capsys, argv)
    assert rc == 0 and "cached for this machine and model" in err
    assert out1 == out2  # the settings do not change the numbers
    for extra in (["--no-autotune"], ["--batch-size", "2"]):
        rc, out3, err = run_cli(capsys, [*argv, *extra])
        assert rc == 0 and "autotune" not in err and out3 == out1
