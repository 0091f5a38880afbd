"""`cxrdx calibrate` fits the out-of-distribution reference of a checkpoint that has none (an import)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import read_checkpoint_meta


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "onnx"))


def _checkpoint(path: Path) -> Path:
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=32))
    save_checkpoint(path, build_model("densenet-tiny"), meta)
    return path


def _table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    table = pd.DataFrame(
        {"image": [f"{i:05d}.png" for i in range(n)], "patient": [f"p{i}" for i in range(n)]}
    )
    for name in FINDINGS:
        table[name] = (rng.random(n) < 0.3).astype(np.uint8)
    return table


def _images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    level = rng.integers(60, 200, n)
    noise = rng.integers(-20, 20, (n, size, size))
    return np.clip(level[:, None, None] + noise, 0, 255).astype(np.uint8)


def _cache(path: Path, n: int = 60, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    np.save(path / "images.npy", _images(n, size, rng))
    table = _table(n, rng)
    table["row"] = np.arange(n)
    table["split"] = np.array(["train", "train", "val"])[np.arange(n) % 3]
    table.to_csv(path / "index.csv", index=False)
    (path / "cache.json").write_text(json.dumps({"size": size}))
    return path


def test_calibrate_fits_the_reference_from_the_train_split(tmp_path, capsys):
    from testkit import run_cli

    cache, plain = _cache(tmp_path / "cache"), _checkpoint(tmp_path / "plain.safetensors")
    out = tmp_path / "cal.safetensors"
    rc, stdout, _ = run_cli(
        capsys, ["calibrate", "--weights", plain, "--data", cache, "--out", out, "--no-progress"]
    )
    assert rc == 0 and "out-of-distribution reference fitted (40 reference, 20 threshold images)" in stdout
    assert read_checkpoint_meta(plain).ood is None  # the input is not rewritten
    ood = read_checkpoint_meta(out).ood
    assert ood["fitted_on"]["reference"].endswith("(split train)") and ood["method"] == "mahalanobis-depths"
    assert ood["precision_4"].shape == (32, 32)  # the final depth of densenet-tiny

    from cxrdx.inference.predictor import Predictor

    pred = Predictor.load(out, backend="torch").predict(
        [np.random.default_rng(1).random((32, 32))], workers=0
    )[0]
    assert pred.in_distribution is False and pred.ood_score > ood["threshold"]

    # a checkpoint that already has a reference (e.g. from `cxrdx train`) keeps it
    again = tmp_path / "again.safetensors"
    rc, stdout, _ = run_cli(
        capsys, ["calibrate", "--weights", out, "--data", cache, "--out", again, "--no-progress"]
    )
    assert rc == 0 and "out-of-distribution reference fitted" not in stdout
    np.testing.assert_array_equal(read_checkpoint_meta(again).ood["precision_4"], ood["precision_4"])

    # a first-format reference (final features only, before issue 26) is refitted on several depths
    from cxrdx.model.checkpoint import update_checkpoint_meta
    from cxrdx.model.ood import OodStats, fit

    old = fit(np.random.default_rng(0).standard_normal((50, 32)))
    update_checkpoint_meta(
        again, lambda m: setattr(m, "ood", OodStats(old.mean, old.precision, 0.1, 9.0).to_meta())
    )
    assert read_checkpoint_meta(again).ood["method"] == "mahalanobis"
    refit = tmp_path / "refit.safetensors"
    rc, stdout, _ = run_cli(
        capsys, ["calibrate", "--weights", again, "--data", cache, "--out", refit, "--no-progress"]
    )
    assert rc == 0 and "out-of-distribution reference fitted" in stdout
    assert read_checkpoint_meta(refit).ood["method"] == "mahalanobis-depths"


def test_calibrate_from_a_csv_splits_its_images_for_reference_and_threshold(tmp_path, capsys):
    from testkit import run_cli

    rng = np.random.default_rng(2)
    folder = tmp_path / "images"
    folder.mkdir()
    table = _table(30, rng)
    for name, im in zip(table["image"], _images(30, 48, rng), strict=True):
        Image.fromarray(im).save(folder / name)
    table.to_csv(tmp_path / "val.csv", index=False)
    plain, out = _checkpoint(tmp_path / "plain.safetensors"), tmp_path / "cal.safetensors"
    argv = ["calibrate", "--weights", plain, "--data", tmp_path / "val.csv", "--images", folder, "--out", out]
    rc, stdout, _ = run_cli(capsys, [*argv, "--no-progress"])
    assert rc == 0 and "(20 reference, 10 threshold images)" in stdout
    ood = read_checkpoint_meta(out).ood
    assert "2 of every 3" in ood["fitted_on"]["reference"] and ood["threshold"] > 0


def test_calibrate_honours_views_and_splits_the_reference_by_patient(tmp_path, capsys, monkeypatch):
    """30 films, 15 laterals: the temperature and the OOD reference see the 15 frontal films only, and
    no patient has films in both the reference and the threshold half."""
    from testkit import run_cli

    import cxrdx.model.ood as ood_module

    rng = np.random.default_rng(3)
    folder = tmp_path / "images"
    folder.mkdir()
    table = _table(30, rng)
    table["view"] = np.where(np.arange(30) % 2 == 0, "PA", "LL")
    table["patient"] = [f"p{i // 6}" for i in range(30)]  # 5 patients, 3 frontal films each
    table["Mass"] = table["Mass"].astype(int)
    table.loc[[0, 2, 4, 6], "Mass"] = -1  # uncertain, on four frontal films
    for name, im in zip(table["image"], _images(30, 48, rng), strict=True):
        Image.fromarray(im).save(folder / name)
    table.to_csv(tmp_path / "val.csv", index=False)
    halves = {}
    real = ood_module.fit_ood_for

    def spy(predictor, reference, threshold, **kw):
        halves["reference"], halves["threshold"] = list(reference), list(threshold)
        return real(predictor, reference, threshold, **kw)

    monkeypatch.setattr(ood_module, "fit_ood_for", spy)
    plain, out = _checkpoint(tmp_path / "plain.safetensors"), tmp_path / "cal.safetensors"
    argv = ["calibrate", "--weights", plain, "--data", tmp_path / "val.csv", "--images", folder, "--out", out]
    rc, stdout, _ = run_cli(capsys, [*argv, "--no-progress"])
    assert rc == 0 and "(15 images)" in stdout and "views left out (--views frontal): LL 15" in stdout
    meta = read_checkpoint_meta(out)
    assert meta.calibration["fitted_on"]["n_images"] == 15
    assert sum(meta.calibration["fitted_on"]["counts"]["Mass"].values()) == 11  # -1 ignored: unlabelled
    patient = dict(zip(table["image"], table["patient"], strict=True))
    ref = {patient[Path(p).name] for p in halves["reference"]}
    thr = {patient[Path(p).name] for p in halves["threshold"]}
    assert not ref & thr and len(ref | thr) == 5
    assert all(table.set_index("image").loc[Path(p).name, "view"] == "PA" for p in halves["reference"])
    assert len(halves["threshold"]) == 6  # patients p0 and p3, 3 frontal films each
    # --uncertain zeros: the four uncertain films count as negatives
    zeros = tmp_path / "zeros.safetensors"
    rc, _, _ = run_cli(capsys, [*argv[:-1], zeros, "--uncertain", "zeros", "--no-progress"])
    counts = read_checkpoint_meta(zeros).calibration["fitted_on"]["counts"]["Mass"]
    assert rc == 0 and sum(counts.values()) == 15
    # --views all fits on every film
    rc, stdout, _ = run_cli(
        capsys, [*argv[:-1], tmp_path / "all.safetensors", "--views", "all", "--no-progress"]
    )
    assert (
        rc == 0
        and read_checkpoint_meta(tmp_path / "all.safetensors").calibration["fitted_on"]["n_images"] == 30
    )


def test_calibrating_on_two_labelled_findings_leaves_the_other_twelve_scores(tmp_path, capsys):
    """An import calibrated on a table labelling Effusion and Pneumothorax only: 12 outputs were not
    fitted, and the checkpoint, the CLI and every Prediction say they are scores (uncalibrated)."""
    from testkit import run_cli

    from cxrdx.inference.predictor import Predictor

    rng = np.random.default_rng(4)
    folder = tmp_path / "images"
    folder.mkdir()
    table = _table(40, rng)[["image", "patient", "Effusion", "Pneumothorax"]]
    for name, im in zip(table["image"], _images(40, 48, rng), strict=True):
        Image.fromarray(im).save(folder / name)
    table.to_csv(tmp_path / "val.csv", index=False)
    plain, out = _checkpoint(tmp_path / "plain.safetensors"), tmp_path / "cal.safetensors"
    argv = ["calibrate", "--weights", plain, "--data", tmp_path / "val.csv", "--images", folder, "--out", out]
    rc, stdout, _ = run_cli(capsys, [*argv, "--no-progress"])
    assert rc == 0 and "these stay scores (uncalibrated)" in stdout
    per = read_checkpoint_meta(out).calibration["per_finding"]
    assert {n for n, m in per.items() if m != "none"} == {"Effusion", "Pneumothorax"}
    pred = Predictor.load(out, backend="torch").predict([rng.random((48, 48))], workers=0)[0]
    assert pred.calibration == "prior+temperature"
    assert sorted(pred.uncalibrated) == sorted(set(FINDINGS) - {"Effusion", "Pneumothorax"})
    assert pred.to_dict()["calibration_by_finding"]["Mass"] == "none"
