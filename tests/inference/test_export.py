"""`cxrdx export` to ONNX: metadata, dynamic batch, agreement with PyTorch, Predictor's export cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdx.cli import main
from cxrdx.files import file_sha256
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference.backends import make_session
from cxrdx.inference.export import export_onnx, read_onnx_metadata
from cxrdx.inference.predictor import Predictor
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint, update_checkpoint_meta
from cxrdx.model.networks import build_model


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))


def make_ckpt(path: Path, architecture: str = "densenet-tiny", size: int = 64, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(architecture)
    meta = CheckpointMeta(
        architecture=architecture,
        preprocessing=Preprocessing(size=size, mean=(0.45,), std=(0.3,)),
        thresholds={"Effusion": 0.4},
    )
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_ckpt(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> list[Path]:
    from cxrdx.phantom.dataset import write_dataset

    out = write_dataset(tmp_path_factory.mktemp("ph"), n=6, size=128, seed=3)
    return sorted((Path(out) / "images").glob("*.png"))


def test_export_writes_metadata_and_a_dynamic_batch(ckpt, tmp_path):
    out = tmp_path / "model.onnx"
    report = export_onnx(ckpt, out)
    assert out.is_file() and report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    meta = read_onnx_metadata(out)
    assert json.loads(meta["labels"]) == list(FINDINGS)
    assert meta["size"] == "64"
    pre = json.loads(meta["preprocessing"])
    assert pre["size"] == 64 and pre["mean"] == [0.45] and pre["std"] == [0.3]
    assert json.loads(meta["thresholds"]) == {"Effusion": 0.4}
    assert meta["source_sha256"] == file_sha256(ckpt)
    session = make_session(out)
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, 64, 64)).astype(np.float32)
        y = session.run(None, {"image": x})[0]
        assert y.shape == (n, len(FINDINGS)) and (y >= 0).all() and (y <= 1).all()  # probabilities out


def test_onnx_matches_torch_on_phantoms(ckpt, phantoms):
    torch_p = Predictor.load(ckpt, backend="torch")
    onnx_p = Predictor.load(ckpt, backend="onnx")
    a = np.array([[r.probabilities[n] for n in FINDINGS] for r in torch_p.predict(phantoms)])
    b = np.array([[r.probabilities[n] for n in FINDINGS] for r in onnx_p.predict(phantoms)])
    assert np.abs(a - b).max() <= 1e-4
    assert np.abs(a - a.mean(0)).max() > 1e-4  # not a constant output


@pytest.mark.slow
@pytest.mark.realdata
def test_onnx_matches_torch_on_real_images_densenet121(shared_data, tmp_path):
    """The real network at a real size, on real NIH films (RGBA ones included) and a DICOM."""
    ckpt = make_ckpt(tmp_path / "d121.safetensors", architecture="densenet121", size=224)
    images = sorted((shared_data / "nih" / "images").glob("*.png"))
    rgba = [p for p in images if p.name == "00000100_000.png"]
    items = (rgba + [p for p in images if p not in rgba])[:3] + [
        shared_data / "dicom" / "monochrome1_sample.dcm"
    ]
    torch_p = Predictor.load(ckpt, backend="torch")
    onnx_p = Predictor.load(ckpt, backend="onnx")
    a, b = torch_p.predict(items, batch_size=2), onnx_p.predict(items, batch_size=4)
    assert all(r.ok for r in a + b)
    diff = max(
        abs(x.probabilities[n] - y.probabilities[n]) for x, y in zip(a, b, strict=True) for n in FINDINGS
    )
    assert diff <= 1e-4


def test_predictor_caches_the_export_per_checkpoint_content(tmp_path):
    ckpt = make_ckpt(tmp_path / "c.safetensors")
    cache = tmp_path / "cache" / "onnx"
    Predictor.load(ckpt, backend="onnx")
    first = sorted(cache.glob("*.onnx"))
    assert len(first) == 1
    inode = first[0].stat().st_ino
    Predictor.load(ckpt, backend="onnx")
    assert sorted(cache.glob("*.onnx")) == first and first[0].stat().st_ino == inode  # reused, not rewritten
    update_checkpoint_meta(ckpt, lambda m: setattr(m, "thresholds", {"Mass": 0.2}))
    Predictor.load(ckpt, backend="onnx")
    assert len(list(cache.glob("*.onnx"))) == 2  # a changed file is exported again


def test_cache_keeps_only_the_most_recent_exports(tmp_path, monkeypatch):
    import cxrdx.inference.export

    monkeypatch.setattr(cxrdx.inference.export, "CACHE_KEEP", 2)
    ckpts = [make_ckpt(tmp_path / f"c{i}.safetensors", seed=i) for i in range(3)]
    for c in ckpts:
        Predictor.load(c, backend="onnx")
    kept = {p.name[:24] for p in (tmp_path / "cache" / "onnx").glob("*.onnx")}
    assert kept == {file_sha256(c)[:24] for c in ckpts[1:]}


def test_damaged_cache_entry_is_replaced(tmp_path, phantoms):
    ckpt = make_ckpt(tmp_path / "c.safetensors")
    Predictor.load(ckpt, backend="onnx")
    (entry,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    entry.write_bytes(b"half a file")
    p = Predictor.load(ckpt, backend="onnx")
    assert p.predict(phantoms[0])[0].ok
    assert entry.stat().st_size > 1000


def test_cli_export(ckpt, tmp_path, capsys):
    out = tmp_path / "sub" / "m.onnx"
    assert main(["export", "--weights", str(ckpt), "--onnx", str(out)]) == 0
    assert out.is_file() and "max |onnx - torch|" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case, expected",
    [("suffix", "must end in .onnx"), ("missing", "no such checkpoint"), ("folder", "is a folder")],
)
def test_cli_export_errors_are_clear(ckpt, tmp_path, capsys, case, expected):
    weights, out = str(ckpt), str(tmp_path / "m.onnx")
    if case == "suffix":
        out = str(tmp_path / "m.bin")
    elif case == "missing":
        weights = str(tmp_path / "none.safetensors")
    else:
        (tmp_path / "dir.onnx").mkdir()
        out = str(tmp_path / "dir.onnx")
    assert main(["export", "--weights", weights, "--onnx", out]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
