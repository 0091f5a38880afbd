"""Predictor API (backends, batching pipeline, thresholds, TTA, Grad-CAM, threads) and `cxrdx predict`."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrdx.cli import main
from cxrdx.errors import ConfigError, CxrdxError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference.predictor import Predictor
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint, update_checkpoint_meta
from cxrdx.model.networks import build_model

SIZE = 64


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))


def make_ckpt(path: Path, seed: int = 0, thresholds: dict | None = None) -> Path:
    torch.manual_seed(seed)
    model = build_model("densenet-tiny")
    meta = CheckpointMeta(
        architecture="densenet-tiny", preprocessing=Preprocessing(size=SIZE), thresholds=thresholds
    )
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_ckpt(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Phantom chest images of different sizes (one not square), as 8-bit PNGs."""
    from cxrdx.phantom.render import make_phantom

    out = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (size, findings) in enumerate(
        [(96, ["Effusion"]), (128, []), (80, ["Mass", "Nodule"]), (112, [])]
    ):
        img, _ = make_phantom(rng, size, findings)
        if i == 2:
            img = img[:, 8:-8]  # 80 x 64: letterboxing and unletterboxing are exercised
        paths.append(out / f"p{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def probs_matrix(preds) -> np.ndarray:
    return np.array([[p.probabilities[n] for n in FINDINGS] for p in preds])


# --------------------------------------------------------------------------- API


def test_predict_returns_every_finding_by_name(ckpt, images):
    p = Predictor.load(ckpt, backend="torch")
    preds = p.predict(images)
    assert [x.source for x in preds] == [str(i) for i in images]
    for pred in preds:
        assert pred.ok and list(pred.probabilities) == list(FINDINGS)
        assert all(0.0 <= v <= 1.0 for v in pred.probabilities.values())
        assert pred.positive is None and pred.uncertainty is None  # no thresholds, no TTA
        ranked = [v for _, v in pred.ranked()]
        assert ranked == sorted(ranked, reverse=True)
    # different images give different outputs (the network really sees them)
    assert np.abs(probs_matrix(preds)[0] - probs_matrix(preds)[1]).max() > 1e-4


def test_paths_and_arrays_agree(ckpt, images):
    p = Predictor.load(ckpt, backend="torch")
    from_path = p.predict(images[:2])
    arrays = [np.asarray(Image.open(i), dtype=np.uint8) for i in images[:2]]
    from_array = p.predict(arrays)
    assert [x.source for x in from_array] == ["array[0]", "array[1]"]
    np.testing.assert_allclose(probs_matrix(from_path), probs_matrix(from_array), atol=1e-6)


def test_batching_and_worker_pool_do_not_change_results(ckpt, images):
    p = Predictor.load(ckpt, backend="torch")
    items = images * 2
    serial = probs_matrix(p.predict(items, batch_size=1, workers=0))
    pooled = p.predict(items, batch_size=5, workers=3)
    assert [x.source for x in pooled] == [str(i) for i in items]
    np.testing.assert_allclose(serial, probs_matrix(pooled), atol=1e-5)


def test_unreadable_file_gets_an_error_and_does_not_stop_the_batch(ckpt, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    missing = tmp_path / "missing.png"
    p = Predictor.load(ckpt, backend="torch")
    preds = p.predict([images[0], bad, images[1], missing, images[2]], batch_size=2, workers=2)
    assert [x.ok for x in preds] == [True, False, True, False, True]
    assert "bad.png" in preds[1].error and "not an image" in preds[1].error
    assert "missing.png" in preds[3].error
    assert preds[1].probabilities == {} and preds[1].to_dict()["probabilities"] is None
    good = probs_matrix([preds[0], preds[2], preds[4]])
    np.testing.assert_allclose(good, probs_matrix(p.predict([images[0], images[1], images[2]])), atol=1e-5)


def test_thresholds_give_positive_and_negative_calls(tmp_path, images):
    ckpt = make_ckpt(tmp_path / "t.safetensors")
    probs = Predictor.load(ckpt, backend="torch").predict(images[0])[0].probabilities
    # just below one probability (-> positive), just above another (-> negative)
    update_checkpoint_meta(
        ckpt,
        lambda m: setattr(m, "thresholds", {"Mass": probs["Mass"] - 1e-3, "Edema": probs["Edema"] + 1e-3}),
    )
    p = Predictor.load(ckpt, backend="torch")
    pred = p.predict(images[0])[0]
    assert pred.positive == {"Mass": True, "Edema": False}
    assert p.thresholds == pytest.approx({"Mass": probs["Mass"] - 1e-3, "Edema": probs["Edema"] + 1e-3})


def test_tta_is_mean_and_spread_of_image_and_mirror(ckpt, images):
    p = Predictor.load(ckpt, backend="torch")
    image = np.asarray(Image.open(images[0]), dtype=np.uint8)
    plain = probs_matrix(p.predict(image))[0]
    mirror = probs_matrix(p.predict(np.ascontiguousarray(image[:, ::-1])))[0]
    pred = p.predict(image, tta=True)[0]
    np.testing.assert_allclose(probs_matrix([pred])[0], (plain + mirror) / 2, atol=1e-5)
    spread = np.array([pred.uncertainty[n] for n in FINDINGS])
    np.testing.assert_allclose(spread, np.abs(plain - mirror) / 2, atol=1e-5)


def test_onnx_backend_matches_torch(ckpt, images):
    t = Predictor.load(ckpt, backend="torch")
    o = Predictor.load(ckpt, backend="onnx")
    assert (t.backend, o.backend) == ("torch", "onnx")
    np.testing.assert_allclose(probs_matrix(o.predict(images)), probs_matrix(t.predict(images)), atol=1e-4)


def test_auto_backend_prefers_onnx_on_cpu_and_rejects_unknown(ckpt):
    assert Predictor.load(ckpt).backend == "onnx"  # onnxruntime is a dependency
    with pytest.raises(ConfigError, match="choose one of"):
        Predictor.load(ckpt, backend="tensorflow")


def test_explain_is_on_the_source_grid_for_any_finding_name(ckpt, images):
    p = Predictor.load(ckpt, backend="torch")
    image, _ = p.read(images[2])
    assert image.shape == (80, 64)
    heat = p.explain(images[2], "infiltrate")  # alias of Infiltration
    assert heat.shape == image.shape and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() > 0.0
    with pytest.raises(CxrdxError, match="unknown finding"):
        p.explain(images[2], "Broken heart")


def test_concurrent_predict_and_explain_match_serial(ckpt, images):
    """The app calls one Predictor from several threads: results must not mix."""
    p = Predictor.load(ckpt, backend="torch")
    arrays = [p.read(i)[0] for i in images]
    want_probs = probs_matrix(p.predict(arrays, workers=0))
    want_heat = [p.explain(a, "Effusion") for a in arrays]
    failures: list[str] = []

    def worker(k: int) -> None:
        for _ in range(3):
            got = probs_matrix(p.predict(arrays, workers=0))
            if not np.allclose(got, want_probs, atol=1e-5):
                failures.append(f"predict in thread {k}")
            i = k % len(arrays)
            if not np.allclose(p.explain(arrays[i], "Effusion"), want_heat[i], atol=1e-4):
                failures.append(f"explain in thread {k}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    # Grad-CAM's hooks live on a private copy, never on the network other threads run
    layer = dict(p.model.named_modules())["class_layers.relu"]
    assert not layer._forward_hooks and not layer._backward_hooks


# --------------------------------------------------------------------------- CLI


def test_cli_json_has_one_record_per_image_and_error_rows(ckpt, images, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing valid after it
    code = main(
        ["predict", "--weights", str(ckpt), "--format", "json", str(images[0]), str(images[1]), str(bad)]
    )
    out, err = capsys.readouterr()
    assert code == 1  # some failed
    records = {Path(r["image"]).name: r for r in json.loads(out)}
    assert set(records) == {"p0.png", "p1.png", "broken.png"}
    assert records["broken.png"]["error"] and "broken.png" in records["broken.png"]["error"]
    assert records["broken.png"]["probabilities"] is None
    assert list(records["p0.png"]["probabilities"]) == list(FINDINGS)
    assert records["p0.png"]["positive"] is None and records["p0.png"]["error"] is None
    assert "2 image(s) predicted, 1 failed" in err and "no decision thresholds" in err


def test_cli_all_good_exits_zero_and_csv_has_every_finding(tmp_path, images, capsys):
    ckpt = make_ckpt(tmp_path / "thr.safetensors", thresholds={"Effusion": 0.0, "Hernia": 1.01})
    out_file = tmp_path / "out" / "preds.csv"
    code = main(
        ["predict", "--weights", str(ckpt), "--format", "csv", "--out", str(out_file), *map(str, images)]
    )
    assert code == 0
    assert capsys.readouterr().out == ""  # went to --out
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert len(rows) == len(images)
    assert [c for c in rows[0] if c in FINDINGS] == list(FINDINGS)
    assert all(r["Effusion_positive"] == "1" and r["Hernia_positive"] == "0" for r in rows)
    assert "Mass_positive" not in rows[0]  # no threshold for Mass
    assert all(r["error"] == "" for r in rows)


def test_cli_out_lists_failed_files_and_reasons_on_stderr(ckpt, images, tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_text("not an image\n")
    out_file = tmp_path / "preds.json"
    code = main(
        [
            "predict",
            "--weights",
            str(ckpt),
            "--format",
            "json",
            "--out",
            str(out_file),
            str(images[0]),
            str(bad),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    reason = {Path(r["image"]).name: r["error"] for r in json.loads(out_file.read_text())}["x.png"]
    assert reason
    failed = [line for line in err.splitlines() if "failed:" in line]
    assert len(failed) == 1 and str(bad) in failed[0] and reason in failed[0]
    assert "1 image(s) predicted, 1 failed" in err and "more (see" not in err


def test_cli_out_lists_at_most_20_failures_then_a_count(ckpt, tmp_path, capsys):
    bad = []
    for i in range(23):
        bad.append(tmp_path / f"bad{i:02d}.png")
        bad[-1].write_text("not an image\n")
    out_file = tmp_path / "preds.csv"
    code = main(
        ["predict", "--weights", str(ckpt), "--format", "csv", "--out", str(out_file), *map(str, bad)]
    )
    err = capsys.readouterr().err
    assert code == 1
    failed = [line for line in err.splitlines() if "failed:" in line]
    assert len(failed) == 20
    assert f"... and 3 more (see {out_file})" in err


def test_cli_table_is_sorted_and_marks_positives(tmp_path, images, capsys):
    ckpt = make_ckpt(tmp_path / "thr.safetensors", thresholds={"Mass": 0.0})
    assert main(["predict", "--weights", str(ckpt), "--backend", "torch", str(images[0])]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0] in FINDINGS]
    assert [r[0] for r in rows] and sorted(r[0] for r in rows) == sorted(FINDINGS)
    values = [float(r[1]) for r in rows]
    assert values == sorted(values, reverse=True)
    mass = next(r for r in rows if r[0] == "Mass")
    assert "POS" in mass and "positive: Mass" in out
    assert "no decision thresholds" not in out


def test_cli_table_says_when_there_are_no_thresholds(ckpt, images, capsys):
    assert main(["predict", "--weights", str(ckpt), str(images[0])]) == 0
    out = capsys.readouterr().out
    assert "no decision thresholds" in out and "cxrdx evaluate" in out and "POS" not in out


def test_cli_folders_recursive_and_progress_bar(ckpt, images, tmp_path, capsys):
    top = tmp_path / "scans"
    (top / "sub").mkdir(parents=True)
    for i, src in enumerate(images):
        (top / f"a{i}.png").write_bytes(src.read_bytes())
        (top / "sub" / f"b{i}.png").write_bytes(src.read_bytes())
    assert main(["predict", "--weights", str(ckpt), "--format", "json", str(top)]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 4
    assert "4/4" not in err  # no progress bar for a handful
    assert main(["predict", "--weights", str(ckpt), "--format", "json", "--recursive", str(top)]) == 0
    out, err = capsys.readouterr()
    assert sorted(Path(r["image"]).name for r in json.loads(out)) == sorted(
        [f"a{i}.png" for i in range(4)] + [f"b{i}.png" for i in range(4)]
    )
    assert "8/8" in err  # tqdm progress on stderr


def test_cli_nothing_to_read_is_a_usage_error(ckpt, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--weights", str(ckpt), str(tmp_path / "nope.png"), str(empty)]) == 2
    err = capsys.readouterr().err
    assert "nope.png" in err and "no image files found" in err and "Traceback" not in err


def test_cli_missing_path_among_good_ones_is_an_error_row(ckpt, images, tmp_path, capsys):
    code = main(
        ["predict", "--weights", str(ckpt), "--format", "json", str(images[0]), str(tmp_path / "gone.png")]
    )
    assert code == 1
    records = json.loads(capsys.readouterr().out)
    assert [r["error"] is None for r in records].count(True) == 1
    assert any(r["error"] and "gone.png" in r["error"] for r in records)


def test_cli_heatmaps_for_top_findings(ckpt, images, tmp_path, capsys):
    heat = tmp_path / "heat"
    assert (
        main(["predict", "--weights", str(ckpt), "--format", "json", "--heatmaps", str(heat), str(images[2])])
        == 0
    )
    record = json.loads(capsys.readouterr().out)[0]
    top3 = sorted(record["probabilities"], key=lambda n: -record["probabilities"][n])[:3]
    assert sorted(p.name for p in heat.glob("*.png")) == sorted(f"p2_{n}.png" for n in top3)
    assert all(Image.open(p).size[0] > 100 for p in heat.glob("*.png"))


def test_cli_bad_weights_is_a_clear_error(images, tmp_path, capsys):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"garbage")
    assert main(["predict", "--weights", str(fake), str(images[0])]) == 2
    err = capsys.readouterr().err
    assert "fake.safetensors" in err and "Traceback" not in err
