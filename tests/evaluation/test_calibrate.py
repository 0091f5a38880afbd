"""`cxrdx calibrate` and `cxrdx evaluate --calibrate`: fitted on validation, written only where asked,
thresholds moved so the calls stay the same, before/after figures in metrics.json and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdx.cli import main as _main
from cxrdx.labels import FINDINGS


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "onnx"))


def main(argv) -> int:
    return _main([str(a) for a in argv])


def tiny_checkpoint(path: Path, **meta_kw) -> Path:
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    meta = CheckpointMeta(
        architecture="densenet-tiny",
        in_channels=1,
        preprocessing=Preprocessing(size=32, channels=1),
        **meta_kw,
    )
    save_checkpoint(path, build_model("densenet-tiny", in_channels=1), meta)
    return path


def tiny_cache(path: Path, n: int = 90, size: int = 32, seed: int = 0) -> Path:
    """A prepared cache (docs/architecture.md layout): train/val/test rows, labels tied to brightness."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(path / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    level = rng.integers(0, 256, n)
    images[:] = np.clip(level[:, None, None] + rng.integers(-20, 20, (n, size, size)), 0, 255).astype(
        np.uint8
    )
    images.flush()
    table = pd.DataFrame(
        {"image": [f"{i:05d}.png" for i in range(n)], "patient": [f"p{i}" for i in range(n)]}
    )
    for c, name in enumerate(FINDINGS):
        table[name] = (rng.random(n) < 0.15 + 0.5 * (level / 255) * (c % 2)).astype(np.uint8)
    table["row"] = np.arange(n)
    table["split"] = np.array(["train", "val", "test"])[np.arange(n) % 3]
    table.to_csv(path / "index.csv", index=False)
    (path / "cache.json").write_text(json.dumps({"size": size}))
    return path


def calls(ckpt: Path, cache: Path) -> dict[str, np.ndarray]:
    from cxrdx.inference.predictor import Predictor

    squares = np.load(cache / "images.npy").astype(np.float32) / 255
    preds = Predictor.load(ckpt, backend="torch").predict(list(squares), workers=0)
    return {n: np.array([p.positive[n] for p in preds]) for n in preds[0].positive}


def test_calibrate_writes_a_new_checkpoint_and_keeps_every_call(tmp_path, capsys):
    from cxrdx.inference.predictor import Predictor
    from cxrdx.model.checkpoint import read_checkpoint

    cache = tiny_cache(tmp_path / "cache")
    plain = tiny_checkpoint(tmp_path / "plain.safetensors")
    squares = np.load(cache / "images.npy").astype(np.float32) / 255
    raw = [p.probabilities for p in Predictor.load(plain, backend="torch").predict(list(squares), workers=0)]
    # an import's operating points on the raw scale, some exactly at a score
    thresholds = {n: float(np.median([r[n] for r in raw])) for n in FINDINGS[:6]}
    thresholds["Mass"] = raw[4]["Mass"]
    src = tiny_checkpoint(tmp_path / "src.safetensors", thresholds=thresholds, threshold_method="op_threshs")
    before = src.read_bytes()
    out = tmp_path / "cal.safetensors"
    rc = main(["calibrate", "--weights", src, "--data", cache, "--out", out, "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "ECE raw" in captured.out and "thresholds moved" in captured.out
    assert src.read_bytes() == before  # the input is never rewritten
    _, meta = read_checkpoint(out)
    assert meta.calibration["method"] == "prior+temperature"
    assert meta.calibration["fitted_on"]["prior"].startswith("fitted")  # unknown training loss: Platt
    assert (
        "split val" in meta.calibration["fitted_on"]["data"]
        and meta.calibration["fitted_on"]["n_images"] == 30
    )
    assert meta.threshold_method == "op_threshs" and meta.threshold_info["calibration"] == "prior+temperature"
    assert meta.thresholds != thresholds
    assert Predictor.load(out, backend="torch").calibrated
    old, new = calls(src, cache), calls(out, cache)
    assert all(np.array_equal(old[n], new[n]) for n in thresholds)
    # calibrating on the test split is refused
    rc = main(
        [
            "calibrate",
            "--weights",
            src,
            "--data",
            cache,
            "--split",
            "test",
            "--out",
            tmp_path / "x.safetensors",
        ]
    )
    assert rc == 2 and "test split must stay unseen" in capsys.readouterr().err


def test_calibrate_keeps_the_training_prior_and_recovers_it_for_old_checkpoints(tmp_path, capsys):
    from cxrdx.metrics.calibration import prior_calibration
    from cxrdx.model.checkpoint import read_checkpoint

    cache = tiny_cache(tmp_path / "cache")
    prev = np.full(len(FINDINGS), 0.2)
    trained = tiny_checkpoint(
        tmp_path / "t.safetensors", calibration=prior_calibration(FINDINGS, 1 - prev, prev, "training")
    )
    rc = main(["calibrate", "--weights", trained, "--data", cache, "--out", tmp_path / "t2.safetensors"])
    assert rc == 0, capsys.readouterr().err
    cal = read_checkpoint(tmp_path / "t2.safetensors")[1].calibration
    assert cal["log_prior_shift"]["Mass"] == pytest.approx(np.log(0.8 / 0.2))
    assert cal["fitted_on"]["prior"] == "training" and cal["w_neg"]["Mass"] == pytest.approx(0.2)
    # a cxrdx checkpoint from before calibration was stored: the prior comes from its training split
    old = tiny_checkpoint(
        tmp_path / "old.safetensors", provenance={"dataset": str(cache), "config": {"train_split": "train"}}
    )
    rc = main(["calibrate", "--weights", old, "--data", cache, "--out", tmp_path / "old2.safetensors"])
    assert rc == 0, capsys.readouterr().err
    cal = read_checkpoint(tmp_path / "old2.safetensors")[1].calibration
    index = pd.read_csv(cache / "index.csv")
    f = index[index["split"] == "train"]["Mass"].mean()
    assert "training prevalence" in cal["fitted_on"]["prior"]
    assert cal["log_prior_shift"]["Mass"] == pytest.approx(np.log((1 - f) / f))


def test_evaluate_reports_before_after_and_writes_only_where_asked(tmp_path, capsys):
    from cxrdx.model.checkpoint import read_checkpoint

    cache = tiny_cache(tmp_path / "cache")
    src = tiny_checkpoint(tmp_path / "src.safetensors")
    before = src.read_bytes()
    out, new = tmp_path / "report", tmp_path / "new.safetensors"
    args = ["evaluate", "--weights", src, "--data", cache, "--out", out, "--n-boot", "5", "--no-progress"]
    rc = main([*args, "--calibrate", "--out-weights", new])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "ECE raw" in captured.out and "fitted here" in captured.out
    assert src.read_bytes() == before
    metrics = json.loads((out / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["method"] == "prior+temperature" and cal["fitted_here"]
    row = cal["per_finding"]["Mass"]
    assert {"prevalence", "mean_predicted_before", "mean_predicted_after", "ece_before", "ece_after"} <= set(
        row
    )
    assert metrics["classes"]["Mass"]["ece_uncalibrated"] == pytest.approx(row["ece_before"], abs=1e-6)
    assert metrics["thresholds"]["calibration"] == "prior+temperature"
    html = (out / "report.html").read_text()
    assert "<h2>Calibration</h2>" in html and "mean over findings" in html and "without TTA" in html
    _, meta = read_checkpoint(new)
    assert meta.calibration["method"] == "prior+temperature"
    assert meta.threshold_info["calibration"] == "prior+temperature" and meta.threshold_info["tta"] is False
    assert meta.threshold_info["positives"]["Mass"] == metrics["thresholds"]["positives"]["Mass"]
    # predictions.csv holds the calibrated numbers the new checkpoint predicts
    from cxrdx.inference.predictor import Predictor

    squares = np.load(cache / "images.npy").astype(np.float32) / 255
    test_rows = pd.read_csv(cache / "index.csv").query("split == 'test'")["row"].to_numpy()
    preds = Predictor.load(new, backend="torch").predict(list(squares[test_rows]), workers=0)
    csv_probs = pd.read_csv(out / "predictions.csv")["Mass"].to_numpy()
    assert np.allclose([p.probabilities["Mass"] for p in preds], csv_probs, atol=1e-5)

    # without --calibrate, an uncalibrated checkpoint says so; --write-thresholds updates in place
    rc = main([*args, "--write-thresholds"])
    assert rc == 0, capsys.readouterr().err
    _, meta = read_checkpoint(src)
    assert meta.thresholds and meta.threshold_info["calibration"] == "none" and not meta.calibration
    assert "score (uncalibrated)" in (out / "report.html").read_text()
    assert (
        main(["evaluate", "--weights", src, "--data", cache, "--out", out, "--ensemble", src, "--calibrate"])
        == 2
    )


def test_train_stores_the_prior_and_fits_the_temperature_on_validation(tmp_path):
    from cxrdx.model.checkpoint import read_checkpoint
    from cxrdx.training.config import TrainConfig
    from cxrdx.training.loop import train

    cache = tiny_cache(tmp_path / "cache", n=60)
    cfg = TrainConfig(
        data=str(cache),
        out=str(tmp_path / "run"),
        arch="densenet-tiny",
        epochs=1,
        batch_size=16,
        deterministic=True,
        progress=False,
        workers=0,
        threads=1,
    )
    result = train(cfg)
    index = pd.read_csv(cache / "index.csv")
    f = index[index["split"] == "train"][list(FINDINGS)].mean()
    for path in (result.best_path, result.last_path):
        cal = read_checkpoint(path)[1].calibration
        assert cal["method"] == "prior+temperature" and cal["fitted_on"]["split"] == "val"
        assert cal["w_pos"]["Mass"] == pytest.approx(1 - f["Mass"], abs=1e-6)
        assert cal["log_prior_shift"]["Mass"] == pytest.approx(np.log((1 - f["Mass"]) / f["Mass"]), abs=1e-5)
        assert all(0.05 <= t <= 20 for t in cal["temperature"].values())
