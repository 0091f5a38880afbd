"""The backend, precision and batch size predict runs: measured once per machine and model, checked, cached."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from testkit import run_cli

from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference import autotune, choose, reference
from cxrdx.inference.backends import onnxruntime_available, openvino_available
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model
from cxrdx.settings import REDUCED_MAX_ABS_DIFF


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "_load", lambda: 0.5)  # a quiet machine, whatever the real load


class FakeClock:
    """time.perf_counter for autotune that only the fake networks and decoders move: no timing noise."""

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


def fake_backends(clock: FakeClock, per_image_s: dict[str, dict[int, float]], error: dict[str, float]):
    """Candidates that take per_image_s[name][batch] s per image and add error[name] to every output."""
    opened = []

    def make(name: str) -> str:
        opened.append(name)
        return name

    def run(name: str, x: np.ndarray) -> np.ndarray:
        clock.sleep(len(x) * per_image_s[name][len(x)])
        return np.full((len(x), 2), 0.5 + error.get(name, 0.0), dtype=np.float32)

    return make, run, opened


def test_measure_keeps_the_fastest_candidate_that_passes_the_check(clock):
    times = {
        "onnx fp32": {8: 0.010, 1: 0.012},
        "openvino fp32": {8: 0.008, 1: 0.009},
        "openvino bf16": {8: 0.002, 1: 0.003},  # fastest, but its outputs are off
    }
    make, run, opened = fake_backends(clock, times, {"openvino bf16": 0.1})

    def check(name: str, out: np.ndarray) -> dict:
        return {"passed": bool(np.abs(out - 0.5).max() <= REDUCED_MAX_ABS_DIFF)}

    x = np.zeros((24, 1, 4, 4), dtype=np.float32)
    tuned, session = autotune.measure(list(times), make, run, x, check, cores=2)
    assert opened == list(times) and session == "openvino fp32"
    assert tuned.candidate == "openvino fp32" and tuned.runtime == "openvino" and tuned.precision == "fp32"
    assert tuned.batch_size == 8 and tuned.net_img_per_s == pytest.approx(1 / 0.008)
    assert tuned.rates["openvino bf16"] == pytest.approx(500) and not tuned.checks["openvino bf16"]["passed"]


def test_decode_threads_keep_up_with_the_network_and_leave_it_a_core(clock):
    assert autotune.decode_ms([lambda d=d: clock.sleep(d) for d in (0.030, 0.300, 0.040)]) == pytest.approx(
        40
    )
    assert autotune.workers_for(40, 50, cores=8) == 2  # 0.04 s x 50 img/s = 2 images decoding at once
    assert autotune.workers_for(40, 50, cores=2) == 1
    assert autotune.workers_for(0, 50, cores=8) == 1


def test_choices_are_cached_per_machine_model_and_candidates(clock):
    calls = []

    def measure():
        calls.append(1)
        return autotune.Tuned(8, 2, 1, 10.0, 0.0, 0.1, 0.5, "onnx fp32"), "session"

    first, fresh, session = autotune.tuned_for("model-a", ["onnx fp32"], measure, cores=2)
    assert fresh and session == "session" and len(calls) == 1
    again, fresh, session = autotune.tuned_for("model-a", ["onnx fp32"], measure, cores=2)
    assert not fresh and session is None and again == first and len(calls) == 1
    _, fresh, _ = autotune.tuned_for("model-a", ["onnx fp32", "onnx int8"], measure, cores=2)
    assert fresh and len(calls) == 2  # an int8 model made since: measured again
    none, fresh, _ = autotune.tuned_for("model-b", ["onnx fp32"], measure, cores=2, measure_now=False)
    assert none is None and not fresh and len(calls) == 2


def test_a_choice_made_on_a_busy_machine_is_measured_again_when_quiet(clock, monkeypatch):
    def measure():
        return autotune.Tuned(8, 2, 1, 10.0, 0.0, 0.1, autotune._load()), None

    monkeypatch.setattr(autotune, "_load", lambda: 9.0)
    busy, fresh, _ = autotune.tuned_for("model-c", ["onnx fp32"], measure, cores=2)
    assert fresh and busy.load == 9.0
    assert autotune.tuned_for("model-c", ["onnx fp32"], measure, cores=2)[1] is False  # still busy
    monkeypatch.setattr(autotune, "_load", lambda: 0.5)
    quiet, fresh, _ = autotune.tuned_for("model-c", ["onnx fp32"], measure, cores=2)
    assert fresh and quiet.load == 0.5


def test_the_reference_check_counts_differences_flips_and_auroc():
    rng = np.random.default_rng(0)
    labels = (rng.random((24, 2)) < 0.4).astype(np.float32)
    labels[:, 1] = np.nan  # a finding the phantoms do not have: no AUROC
    fp32 = rng.random((24, 2)).astype(np.float32)
    ref = reference.Reference(np.zeros((24, 4, 4), np.uint8), fp32, labels, ["A", "B"])
    fp32[0, 0] = 0.4
    moved = fp32.copy()
    moved[0, 0] = 0.7  # crosses 0.5
    c = reference.check(ref, moved, lambda p: p, {"A": 0.5, "B": 0.5})
    assert c.max_abs_diff == pytest.approx(0.3, abs=1e-6)
    assert c.calls_flipped == pytest.approx(1 / 48)  # one call of 24 images x 2 findings
    expected = roc_auc_score(labels[:, 0], moved[:, 0]) - roc_auc_score(labels[:, 0], fp32[:, 0])
    assert c.auroc_diff == pytest.approx(expected, abs=1e-9)
    assert not c.passed and "max |dp|" in c.reason
    same = reference.check(ref, fp32 + 1e-4, lambda p: p, None)
    assert same.passed and same.calls_flipped is None and same.auroc_diff == pytest.approx(0.0)


def test_the_reference_check_counts_flipped_ood_verdicts():
    class SumScore:  # an OOD scorer: the sum of the features, in distribution up to 1.0
        threshold = 1.0

        def score(self, f: np.ndarray) -> np.ndarray:
            return f.sum(axis=1)

    n = 20
    fp32 = np.full((n, 1), 0.3, np.float32)
    feats = np.tile(np.array([[0.2, 0.3]], np.float32), (n, 1))  # score 0.5: in
    feats[:4] = [0.6, 0.6]  # score 1.2: out
    ref = reference.Reference(np.zeros((n, 4, 4), np.uint8), fp32, np.full((n, 1), np.nan), ["A"], feats)
    moved = feats.copy()
    moved[:2] = [0.3, 0.3]  # two out-of-distribution films now read as in: 2 of 20 verdicts flip
    c = reference.check(ref, np.concatenate([fp32, moved], axis=1), lambda p: p, None, SumScore())
    assert c.ood_flipped == pytest.approx(0.10) and not c.passed and "OOD verdicts" in c.reason
    same = reference.check(ref, np.concatenate([fp32, feats], axis=1), lambda p: p, None, SumScore())
    assert same.ood_flipped == 0.0 and same.passed


def test_candidates_follow_the_cpu_flags_the_flags_and_the_int8_file(monkeypatch, tmp_path):
    from cxrdx.inference import export

    monkeypatch.setattr(choose, "openvino_available", lambda: True)
    monkeypatch.setattr(choose, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(choose, "_int8_variant", lambda: "int8")
    monkeypatch.setattr(choose, "cpu_info", lambda: ("x", frozenset({"avx2", "avx512f"})))
    sha = "ab" * 32
    assert choose.candidates(sha) == ["onnx fp32", "openvino fp32"]
    monkeypatch.setattr(choose, "cpu_info", lambda: ("x", frozenset({"avx512f", "amx_bf16", "amx_tile"})))
    assert choose.candidates(sha) == ["onnx fp32", "openvino fp32", "openvino bf16"]
    int8 = export.cached_export_path(sha, "int8")
    int8.parent.mkdir(parents=True, exist_ok=True)
    int8.write_bytes(b"x")
    assert choose.candidates(sha)[-1] == "onnx int8"
    assert choose.candidates(sha, precision="fp32") == ["onnx fp32", "openvino fp32"]  # exact only
    assert choose.candidates(sha, backend="onnx") == ["onnx fp32", "onnx int8"]
    assert choose.candidates(sha, backend="openvino") == ["openvino fp32", "openvino bf16"]
    assert choose.candidates(sha, precision="bf16") == ["openvino bf16"]


def _tiny(tmp_path, n_images: int = 5):
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
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / f"{i}.png")
    return ckpt, folder


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
def test_cli_tunes_once_then_uses_the_cache_and_can_be_turned_off(tmp_path, capsys, monkeypatch):
    from cxrdx.jobs import predict_batch as predict_job

    monkeypatch.setattr(predict_job, "AUTOTUNE_MIN_IMAGES", 4)
    monkeypatch.setenv("CXRDX_EXPORT_ON_WRITE", "0")
    ckpt, folder = _tiny(tmp_path)
    argv = [
        "predict",
        "--weights",
        ckpt,
        folder,
        "--format",
        "csv",
        "--backend",
        "onnx",
        "--precision",
        "fp32",
    ]
    rc, out1, err = run_cli(capsys, argv)
    assert rc == 0 and "autotune: onnx fp32, batch" in err and "measured in" in err
    rc, out2, err = run_cli(capsys, argv)
    assert rc == 0 and "cached for this machine and model" in err
    assert out1 == out2  # the settings do not change the numbers
    rc, out3, err = run_cli(capsys, [*argv, "--no-autotune"])
    assert rc == 0 and "autotune" not in err and out3 == out1
    rc, out4, err = run_cli(capsys, [*argv, "--batch-size", "2"])
    assert rc == 0 and out4 == out1
    saved = json.loads((tmp_path / "cache" / "autotune.json").read_text())
    (entry,) = saved.values()
    assert entry["candidate"] == "onnx fp32" and set(entry["rates"]) == {"onnx fp32"}
    assert next((tmp_path / "cache" / "onnx").glob("*.reference.npz")).is_file()


@pytest.mark.skipif(
    not (onnxruntime_available() and openvino_available()), reason="onnxruntime and openvino are needed"
)
def test_the_choice_is_made_when_the_export_is_written_and_recorded(tmp_path, capsys, monkeypatch):
    """prepare_export_note measures the default choice: the first predict job finds it cached."""
    from cxrdx.inference import on_write

    monkeypatch.setenv("CXRDX_AUTOTUNE_ON_WRITE", "1")
    ckpt, folder = _tiny(tmp_path)
    on_write.prepare_export_note("import", ckpt)
    saved = json.loads((tmp_path / "cache" / "autotune.json").read_text())
    (entry,) = saved.values()
    assert {"onnx fp32", "openvino fp32"} <= set(entry["rates"])
    if choose.bf16_native():
        bf16 = entry["checks"]["openvino bf16"]
        assert bf16["n_images"] == reference.REFERENCE_IMAGES and bf16["max_abs_diff"] < 0.05
    rc, _out, err = run_cli(capsys, ["predict", "--weights", ckpt, folder, "--format", "json"])
    assert rc == 0 and "cached for this machine and model" in err and "measured in" not in err
    assert f"autotune: {entry['candidate']}," in err
    assert "chosen by measurement on this machine" in err
    rc, _out, err = run_cli(
        capsys, ["predict", "--weights", ckpt, folder, "--format", "json", "--precision", "fp32"]
    )
    assert rc == 0 and "(backend onnx)" in err or "(backend openvino)" in err  # never bf16 nor int8


@pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")
def test_precision_by_name(tmp_path):
    """bf16 runs OpenVINO in bf16 (where the CPU has it; OpenVINO's own default there), fp32 stays exact."""
    from cxrdx.errors import ConfigError
    from cxrdx.inference.predictor import Predictor

    ckpt, folder = _tiny(tmp_path, n_images=2)
    files = sorted(folder.iterdir())
    exact = Predictor.load(ckpt, backend="openvino", precision="fp32")
    assert exact.backend == "openvino" and exact.session.precision == "f32"
    bf16 = Predictor.load(ckpt, precision="bf16")
    assert bf16.backend == "openvino bf16"
    if choose.bf16_native():
        assert bf16.session.precision == "bf16"
    p32 = Predictor.load(ckpt, backend="onnx").predict(files)
    p16 = bf16.predict(files)
    diff = max(
        abs(a.probabilities[n] - b.probabilities[n])
        for a, b in zip(p32, p16, strict=True)
        for n in a.probabilities
    )
    assert diff < 0.05  # bf16 keeps 8 bits of mantissa: close, not equal
    with pytest.raises(ConfigError, match="bf16 runs on OpenVINO"):
        Predictor.load(ckpt, backend="onnx", precision="bf16")
