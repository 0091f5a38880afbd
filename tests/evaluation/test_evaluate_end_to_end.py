"""The `cxrdx evaluate` command end to end: caches, label CSVs, thresholds into a new checkpoint, ensembles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdx.labels import FINDINGS
from cxrdx.metrics.thresholds import choose_thresholds


def _img_sources(html: str) -> set[str]:
    return set(re.findall(r"<img src='([^']+)'", html))


def _tiny_checkpoint(path: Path, size: int = 32):
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    model = build_model("densenet-tiny", in_channels=1)
    meta = CheckpointMeta(
        architecture="densenet-tiny", in_channels=1, preprocessing=Preprocessing(size=size, channels=1)
    )
    save_checkpoint(path, model, meta)
    return path


def _tiny_cache(path: Path, n: int = 60, size: int = 40, seed: int = 0) -> Path:
    """A prepared cache written by hand, following the docs/architecture.md contract."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(path / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    images[:] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    images.flush()
    labels = (rng.random((n, len(FINDINGS))) < 0.35).astype(np.uint8)
    labels[:, FINDINGS.index("Hernia")] = 0  # an undefined class
    labels[: n // 3 * 2 : 2, FINDINGS.index("Hernia")] = 1  # ... but present in train/val
    split = np.array(["train", "val", "test"])[np.arange(n) % 3]
    labels[split == "test", FINDINGS.index("Hernia")] = 0
    table = pd.DataFrame(
        {
            "image": [f"{i:05d}.png" for i in range(n)],
            "patient": [f"t{i // 6}" if i % 3 == 2 else f"p{i}" for i in range(n)],
        }
    )
    for c, name in enumerate(FINDINGS):
        table[name] = labels[:, c]
    table["row"] = np.arange(n)
    table["split"] = split
    table.to_csv(path / "index.csv", index=False)
    (path / "cache.json").write_text(json.dumps({"size": size}))
    return path


def test_evaluate_cli_end_to_end_writes_report_and_thresholds(tmp_path, capsys):
    from cxrdx.cli import main
    from cxrdx.inference.predictor import Predictor
    from cxrdx.model.checkpoint import read_checkpoint

    src = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    before = src.read_bytes()
    ckpt = tmp_path / "with_thresholds.safetensors"
    cache = _tiny_cache(tmp_path / "cache")
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--weights",
            str(src),
            "--data",
            str(cache),
            "--out",
            str(out),
            "--n-boot",
            "40",
            "--tta",
            "--out-weights",
            str(ckpt),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Hernia" in captured.out and "undefined" in captured.out
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns[:15]) == ["image", *FINDINGS]
    assert len(preds) == 20 and {f"{n}_spread" for n in FINDINGS} <= set(preds.columns)
    assert (preds["Atelectasis_spread"] >= 0).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["n_images"] == 20
    assert metrics["undefined_classes"] == ["Hernia"]
    assert metrics["thresholds"]["method"] == "youden"
    assert "val" in metrics["thresholds"]["chosen_on"]
    html = (out / "report.html").read_text()
    assert _img_sources(html) == {p.name for p in out.glob("*.png")}
    _, meta = read_checkpoint(ckpt)
    sidecar = json.loads((out / "thresholds.json").read_text())["thresholds"]
    assert meta.thresholds == pytest.approx(sidecar)
    assert meta.threshold_method == "youden"
    assert meta.evaluation["n"] == 20
    assert src.read_bytes() == before  # the input checkpoint is not rewritten
    info = meta.threshold_info  # how they were chosen
    assert info["tta"] is True and info["calibration"] == "none" and "val" in info["split"]
    assert info["positives"]["Hernia"] > 0 and set(info["positives"]) == set(FINDINGS)
    # the thresholds come from the validation split's predictions
    val = pd.read_csv(out / "val_predictions.csv")
    index = pd.read_csv(cache / "index.csv")
    val_true = index[index["split"] == "val"].set_index("image").loc[val["image"]]
    expected = choose_thresholds(
        val_true[list(FINDINGS)].to_numpy(), val[list(FINDINGS)].to_numpy(), FINDINGS
    )
    assert meta.thresholds == pytest.approx({k: v for k, v in expected.items() if v is not None}, abs=1e-5)
    # ... and Predictor makes positive/negative calls with them
    square = np.load(cache / "images.npy")[0].astype(np.float32) / 255
    pred = Predictor.load(ckpt).predict(square, tta=True)[0]
    assert pred.ok, pred.error
    assert set(pred.positive) == set(meta.thresholds)
    assert all(pred.positive[n] == (pred.probabilities[n] >= t) for n, t in meta.thresholds.items())


def test_evaluate_without_validation_chooses_no_thresholds(tmp_path, capsys):
    from cxrdx.cli import main
    from cxrdx.model.checkpoint import read_checkpoint

    ckpt = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    cache = _tiny_cache(tmp_path / "cache")
    out = tmp_path / "report"
    args = ["evaluate", "--weights", str(ckpt), "--data", str(cache), "--out", str(out), "--n-boot", "10"]
    rc = main([*args, "--val-split", "nonexistent", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "not chosen" in captured.out
    assert read_checkpoint(ckpt)[1].thresholds is None
    assert not (out / "thresholds.json").exists()
    assert "Thresholds were not chosen" in (out / "report.html").read_text()
    # choosing thresholds on the test split itself is refused
    rc = main([*args, "--val-split", "test", "--no-progress"])
    assert rc == 2 and "must not be chosen on the test data" in capsys.readouterr().err


def test_evaluate_reports_a_missing_split_and_a_missing_file(tmp_path, capsys):
    from cxrdx.cli import main

    ckpt = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    cache = _tiny_cache(tmp_path / "cache")
    rc = main(
        [
            "evaluate",
            "--weights",
            str(ckpt),
            "--data",
            str(cache),
            "--out",
            str(tmp_path / "r"),
            "--split",
            "holdout",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "holdout" in err and "'test'" in err and "Traceback" not in err
    rc = main(
        [
            "evaluate",
            "--weights",
            str(ckpt),
            "--data",
            str(tmp_path / "nope.csv"),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 2 and "nope.csv" in capsys.readouterr().err


def test_evaluate_ensemble_spread_and_resized_cache(tmp_path):
    from cxrdx.evaluation.evaluate import EvaluateConfig, evaluate

    a = _tiny_checkpoint(tmp_path / "a.safetensors", size=32)
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(1)
    b = tmp_path / "b.safetensors"
    meta = CheckpointMeta(
        architecture="densenet-tiny", in_channels=1, preprocessing=Preprocessing(size=48, channels=1)
    )
    save_checkpoint(b, build_model("densenet-tiny", in_channels=1), meta)
    cache = _tiny_cache(tmp_path / "cache")  # 40 px squares: resized to 32 and 48
    metrics = evaluate(
        EvaluateConfig(
            weights=str(a),
            data=str(cache),
            out=str(tmp_path / "r"),
            ensemble=[str(b)],
            n_boot=10,
            progress=False,
        )
    )
    assert "2 checkpoints" in metrics.model.uncertainty
    assert (
        json.loads((tmp_path / "r" / "metrics.json").read_text())["model"]["uncertainty"]
        == metrics.model.uncertainty
    )
    preds = pd.read_csv(tmp_path / "r" / "predictions.csv")
    assert (preds["Mass_spread"] > 0).any()
    from cxrdx.model.checkpoint import read_checkpoint

    assert read_checkpoint(a)[1].thresholds is None  # ensemble thresholds are not written into one checkpoint
    assert (tmp_path / "r" / "thresholds.json").exists()


def test_evaluate_label_csvs_with_an_image_folder(tmp_path, capsys):
    from cxrdx.cli import main
    from cxrdx.data.tables import read_labels
    from cxrdx.phantom.dataset import write_dataset

    data = write_dataset(tmp_path / "ph", n=24, size=64, seed=1)
    table = read_labels(data / "Data_Entry.csv")
    columns = ["image", "patient", *FINDINGS]
    patients = sorted(set(table["patient"]))
    val_patients = set(patients[: len(patients) // 2])
    table[table["patient"].isin(val_patients)][columns].to_csv(tmp_path / "val.csv", index=False)
    test = table[~table["patient"].isin(val_patients)]
    test[columns].to_csv(tmp_path / "test.csv", index=False)
    ckpt = _tiny_checkpoint(tmp_path / "m.safetensors", size=32)
    out = tmp_path / "r"
    args = ["evaluate", "--weights", str(ckpt), "--data", str(tmp_path / "test.csv"), "--out", str(out)]
    args += ["--val", str(tmp_path / "val.csv"), "--images", str(data / "images"), "--n-boot", "20"]
    rc = main([*args, "--target-sensitivity", "0.9", "--no-progress", "--blank", "unlabelled"])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["n_images"] == len(test)
    assert metrics["dataset"]["label_policy"]["blank"] == "unlabelled"  # how the labels were read
    assert metrics["thresholds"]["method"] == "sensitivity>=0.9"
    assert metrics["mean_auroc"] is None or 0 <= metrics["mean_auroc"] <= 1
    assert len(pd.read_csv(out / "predictions.csv")) == len(test)
