"""Evaluation metrics, thresholds, bootstrap, calibration, report and the `cxrdx evaluate` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrdx.evaluate import (
    CHEXNET_AUROC,
    auroc_with_ci,
    binary_metrics,
    choose_thresholds,
    compute_metrics,
    expected_calibration_error,
    fast_auroc,
    mean_auroc,
    patient_multiplicities,
    resample_by_patient,
    sensitivity_threshold,
    write_report,
    youden_threshold,
)
from cxrdx.labels import FINDINGS


def _random_set(rng, n=300, n_patients=90, names=FINDINGS):
    y = (rng.random((n, len(names))) < 0.3).astype(np.int64)
    probs = np.clip(0.3 * y + rng.random((n, len(names))) * 0.7, 0, 1)
    patients = rng.integers(0, n_patients, n).astype(str)
    return y, probs, patients


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_auroc_equals_sklearn_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500), 2)  # many ties
    assert fast_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    w = rng.integers(0, 4, 500)
    rep = np.repeat(np.arange(500), w)
    assert fast_auroc(y, s, w) == pytest.approx(roc_auc_score(y[rep], s[rep]), abs=1e-12)


def test_fast_auroc_undefined_without_both_classes():
    assert fast_auroc(np.zeros(10), np.linspace(0, 1, 10)) is None
    assert fast_auroc(np.ones(10), np.linspace(0, 1, 10)) is None


def test_auroc_point_equals_sklearn_and_ci_contains_it():
    rng = np.random.default_rng(3)
    y, probs, patients = _random_set(rng)
    res = auroc_with_ci(y, probs, patients, n_boot=300, seed=1)
    for c, name in enumerate(FINDINGS):
        r = res[name]
        assert r.auroc == pytest.approx(roc_auc_score(y[:, c], probs[:, c]), abs=1e-12)
        assert r.ci_low < r.auroc < r.ci_high
        assert r.n_boot_valid == 300
        assert r.ci_low > 0.5 and r.ci_high <= 1.0


def test_ci_narrows_with_more_patients_not_more_images_per_patient():
    rng = np.random.default_rng(4)
    y, probs, _ = _random_set(rng, n=400, names=FINDINGS[:1])
    few = np.repeat(np.arange(20), 20).astype(str)  # 20 patients x 20 images
    many = np.arange(400).astype(str)
    w_few = auroc_with_ci(y, probs, few, FINDINGS[:1], n_boot=300)["Atelectasis"]
    w_many = auroc_with_ci(y, probs, many, FINDINGS[:1], n_boot=300)["Atelectasis"]
    assert (w_few.ci_high - w_few.ci_low) > (w_many.ci_high - w_many.ci_low)


def test_patient_bootstrap_never_splits_a_patient():
    rng = np.random.default_rng(5)
    patients = np.array(["p1", "p1", "p1", "p2", "p3", "p3", "p4", "p5", "p5", "p5", "p5"])
    counts = patient_multiplicities(patients, 200, rng)
    assert counts.shape == (200, len(patients))
    for pid in set(patients):
        cols = counts[:, patients == pid]
        assert (cols == cols[:, :1]).all()  # every image of a patient has the patient's multiplicity
    assert (counts[:, [0, 3, 4, 6, 7]].sum(1) == 5).all()  # one image per patient: 5 draws per replicate
    for _ in range(50):
        idx = resample_by_patient(patients, rng)
        drawn = patients[idx]
        for pid in set(drawn):
            n_images = int((patients == pid).sum())
            assert (drawn == pid).sum() % n_images == 0
            per_image = np.bincount(idx[drawn == pid], minlength=len(patients))[patients == pid]
            assert len(set(per_image)) == 1


def test_undefined_classes_are_named_and_left_out_of_the_mean():
    rng = np.random.default_rng(6)
    y, probs, patients = _random_set(rng)
    y[:, FINDINGS.index("Hernia")] = 0
    y[:, FINDINGS.index("Edema")] = 1
    res = auroc_with_ci(y, probs, patients, n_boot=50)
    mean, used, left_out = mean_auroc(res)
    assert left_out == ["Edema", "Hernia"]
    assert res["Hernia"].auroc is None and res["Hernia"].ci_low is None
    assert mean == pytest.approx(np.mean([res[k].auroc for k in used]))
    assert np.isfinite(mean)
    metrics = compute_metrics(y, probs, patients, FINDINGS, n_boot=20)
    assert metrics["undefined_classes"] == ["Edema", "Hernia"]
    assert metrics["classes"]["Hernia"]["auroc"] is None
    json.dumps(metrics, allow_nan=False)  # no NaN anywhere


def test_degenerate_bootstrap_replicates_are_skipped_and_counted():
    y = np.zeros((40, 1), dtype=np.int64)
    y[0, 0] = 1  # one positive, in one patient
    probs = np.linspace(0, 1, 40)[:, None]
    res = auroc_with_ci(y, probs, np.arange(40).astype(str), FINDINGS[:1], n_boot=200)["Atelectasis"]
    assert 0 < res.n_boot_valid < 200  # replicates without the positive patient are left out


def _brute_force_youden(y, s):
    p, n = y.sum(), len(y) - y.sum()
    best_j, best_t = -np.inf, None
    for t in sorted(np.unique(s), reverse=True):
        pred = s >= t
        tp = int(np.sum(pred & (y == 1)))
        tn = int(np.sum(~pred & (y == 0)))
        j = tp / p + tn / n - 1
        if j > best_j:
            best_j, best_t = j, t
    return best_t, best_j


@pytest.mark.parametrize("seed", range(5))
def test_youden_threshold_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(np.clip(0.2 * y + rng.random(200), 0, 1), 2)
    t, j = _brute_force_youden(y, s)
    assert youden_threshold(y, s) == t
    m = binary_metrics(y, s, youden_threshold(y, s))
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(j)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95])
def test_target_sensitivity_threshold_reaches_target_and_is_the_highest(target):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 300)
    s = np.clip(0.25 * y + rng.random(300), 0, 1)
    t = sensitivity_threshold(y, s, target)
    assert binary_metrics(y, s, t)["sensitivity"] >= target
    higher = s[s > t]
    if len(higher):
        assert binary_metrics(y, s, higher.min())["sensitivity"] < target


def test_choose_thresholds_none_for_classes_without_positives():
    rng = np.random.default_rng(8)
    y, probs, _ = _random_set(rng)
    y[:, 0] = 0
    th = choose_thresholds(y, probs, FINDINGS, "sensitivity", 0.9)
    assert th["Atelectasis"] is None
    assert all(isinstance(th[n], float) for n in FINDINGS[1:])


def test_binary_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.05])
    m = binary_metrics(y, s, 0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["ppv"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 / 3)
    assert binary_metrics(y, s, 2.0)["ppv"] is None  # no positive calls: undefined, not NaN


def test_ece_zero_when_calibrated_and_positive_when_not():
    rng = np.random.default_rng(9)
    p = rng.random(200_000)
    y = (rng.random(200_000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, p**3) > 0.1
    assert expected_calibration_error(np.array([1, 0, 1, 0]), np.array([1.0, 0.0, 1.0, 0.0])) == 0.0


def test_chexnet_reference_covers_every_finding():
    assert set(CHEXNET_AUROC) == set(FINDINGS)
    assert CHEXNET_AUROC["Cardiomegaly"] == 0.9248


def _img_sources(html: str) -> set[str]:
    return set(re.findall(r"<img src='([^']+)'", html))


def test_report_html_references_every_png(tmp_path):
    rng = np.random.default_rng(10)
    y, probs, patients = _random_set(rng)
    y[:, FINDINGS.index("Hernia")] = 0
    th = choose_thresholds(y, probs, FINDINGS)
    metrics = compute_metrics(y, probs, patients, FINDINGS, th, n_boot=30)
    metrics |= {
        "model": {
            "weights": "m.safetensors",
            "architecture": "densenet-tiny",
            "ensemble": ["m"],
            "tta": True,
        },
        "dataset": {"description": "synthetic", "n_images": len(y), "n_patients": 90, "n_unreadable": 0},
        "thresholds": {
            "values": th,
            "method": "youden",
            "method_text": "Youden",
            "chosen_on": "val",
            "undefined": [],
        },
        "bootstrap": {"n_boot": 30, "seed": 0},
        "notes": [],
    }
    report = write_report(
        tmp_path, metrics, y, probs, FINDINGS, spread=rng.random(y.shape) * 0.1, spread_kind="tta"
    )
    html = report.read_text()
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert {"roc.png", "pr.png", "reliability.png", "prevalence.png", "uncertainty.png"} <= pngs
    assert _img_sources(html) == pngs
    assert "Hernia" in html and "left out of the mean" in html
    assert "random split reference" in html
    assert "NaN" not in html and "nan" not in html.replace("nance", "")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["classes"]["Hernia"]["auroc"] is None


# --------------------------------------------------------------------------- end to end


def _tiny_checkpoint(path: Path, size: int = 32):
    import torch

    from cxrdx.model import CheckpointMeta, build_model, save_checkpoint
    from cxrdx.preprocess import Preprocessing

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
    from cxrdx.model import read_checkpoint
    from cxrdx.predict import Predictor

    ckpt = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    cache = _tiny_cache(tmp_path / "cache")
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--weights",
            str(ckpt),
            "--data",
            str(cache),
            "--out",
            str(out),
            "--n-boot",
            "40",
            "--tta",
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
    pred = Predictor.load(ckpt).predict(square)[0]
    assert pred.ok, pred.error
    assert set(pred.positive) == set(meta.thresholds)
    assert all(pred.positive[n] == (pred.probabilities[n] >= t) for n, t in meta.thresholds.items())


def test_evaluate_without_validation_chooses_no_thresholds(tmp_path, capsys):
    from cxrdx.cli import main
    from cxrdx.model import read_checkpoint

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
    from cxrdx.evaluate import EvaluateConfig, evaluate

    a = _tiny_checkpoint(tmp_path / "a.safetensors", size=32)
    import torch

    from cxrdx.model import CheckpointMeta, build_model, save_checkpoint
    from cxrdx.preprocess import Preprocessing

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
    assert "2 checkpoints" in metrics["model"]["uncertainty"]
    preds = pd.read_csv(tmp_path / "r" / "predictions.csv")
    assert (preds["Mass_spread"] > 0).any()
    from cxrdx.model import read_checkpoint

    assert read_checkpoint(a)[1].thresholds is None  # ensemble thresholds are not written into one checkpoint
    assert (tmp_path / "r" / "thresholds.json").exists()


def test_evaluate_label_csvs_with_an_image_folder(tmp_path, capsys):
    from cxrdx.cli import main
    from cxrdx.datasets import read_labels
    from cxrdx.phantom import write_dataset

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
    rc = main([*args, "--target-sensitivity", "0.9", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["n_images"] == len(test)
    assert metrics["thresholds"]["method"] == "sensitivity>=0.9"
    assert metrics["mean_auroc"] is None or 0 <= metrics["mean_auroc"] <= 1
    assert len(pd.read_csv(out / "predictions.csv")) == len(test)
