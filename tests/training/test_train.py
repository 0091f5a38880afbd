"""`cxrdx train`: a tiny run learns and writes its files; resume after SIGKILL; clear config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import write_cache

from cxrdx.cli import main as cli_main
from cxrdx.errors import DataError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import load_checkpoint, read_checkpoint
from cxrdx.training.config import TrainConfig
from cxrdx.training.data import to_input as _to_input
from cxrdx.training.loop import train

REPO = Path(__file__).resolve().parents[2]


def make_toy_cache(out: Path, n_train: int = 96, n_val: int = 32, size: int = 32, seed: int = 0) -> Path:
    """A cache in `cxrdx prepare`'s layout whose images show two learnable findings.

    Cardiomegaly = a bright central disc, Effusion = a bright lower band; the other
    findings never occur. Written directly (not via prepare) so training tests do not
    depend on decoding; test_cache.py checks that prepare writes this same layout.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    labels = np.zeros((n, len(FINDINGS)), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        img = 0.2 + 0.05 * rng.standard_normal((size, size))
        if rng.random() < 0.4:
            labels[i, FINDINGS.index("Cardiomegaly")] = 1
            img += 0.5 * (((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.06)
        if rng.random() < 0.3:
            labels[i, FINDINGS.index("Effusion")] = 1
            img += 0.4 * (yy > 0.75)
        images[i] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return write_cache(out, images, labels, ["train"] * n_train + ["val"] * n_val)


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = TrainConfig(
        data=str(data),
        out=str(out),
        arch="densenet-tiny",
        epochs=3,
        batch_size=16,
        lr=1e-3,
        deterministic=True,
        progress=False,
        workers=0,
        threads=1,
    )
    return replace(base, **kw)


def cli_args(cfg: TrainConfig) -> list[str]:
    return [
        "train",
        "--data",
        cfg.data,
        "--out",
        cfg.out,
        "--arch",
        cfg.arch,
        "--epochs",
        str(cfg.epochs),
        "--batch-size",
        str(cfg.batch_size),
        "--lr",
        str(cfg.lr),
        "--deterministic",
        "--no-progress",
        "--workers",
        "0",
        "--threads",
        str(cfg.threads),
    ]


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory) -> Path:
    return make_toy_cache(tmp_path_factory.mktemp("toy") / "cache")


@pytest.fixture(scope="module")
def tiny_run(toy_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    return train(tiny_config(toy_cache, out)), out


def test_tiny_training_learns_and_writes_everything(tiny_run, toy_cache):
    result, out = tiny_run
    losses = [h["train_loss"] for h in result.history]
    val_losses = [h["val_loss"] for h in result.history]
    assert result.epochs_completed == 3 and len(losses) == 3
    assert losses[-1] < losses[0] and val_losses[-1] < val_losses[0]
    for name in ("best.safetensors", "last.safetensors", "last_state.pt", "config.json", "history.json"):
        assert (out / name).is_file(), name
    model, meta = load_checkpoint(out / "last.safetensors")
    assert meta.architecture == "densenet-tiny" and meta.labels == list(FINDINGS)
    assert meta.provenance["epoch"] == 3 and meta.provenance["splits"] == {"train": 96, "val": 32}
    assert meta.provenance["val_loss"] == pytest.approx(val_losses[-1])
    # normalisation = pixel statistics of the training split only
    images = np.load(toy_cache / "images.npy")[:96] / 255.0
    assert meta.preprocessing.size == 32 and meta.preprocessing.channels == 3
    assert meta.preprocessing.mean[0] == pytest.approx(images.mean(), abs=1e-6)
    assert meta.preprocessing.std[0] == pytest.approx(images.std(), abs=1e-6)
    _, best_meta = read_checkpoint(out / "best.safetensors")
    assert best_meta.provenance["epoch"] == result.best_epoch
    assert best_meta.provenance["val_loss"] == pytest.approx(result.best_val_loss)
    saved = json.loads((out / "config.json").read_text())
    assert saved["arch"] == "densenet-tiny" and saved["epochs"] == 3 and saved["lr"] == 1e-3
    # the learnable findings are learnt
    assert result.best_val_auroc["Cardiomegaly"] > 0.8
    assert set(result.best_val_auroc) == {"Cardiomegaly", "Effusion"}  # others have no positives: skipped


def test_tensorboard_events_are_readable(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = tiny_run
    events = EventAccumulator(str(out))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "lr", "val/auroc/Cardiomegaly", "val/auroc_mean"} <= tags
    assert len(events.Scalars("val/loss")) == 3
    assert all(np.isfinite(e.value) for e in events.Scalars("train/loss"))


def test_device_normalisation_matches_preprocessing():
    rng = np.random.default_rng(0)
    squares = rng.integers(0, 256, size=(4, 32, 32), dtype=np.uint8)
    pre = Preprocessing(size=32, channels=3, mean=(0.3,), std=(0.2,))
    cfg = TrainConfig(flip=True, affine=True)
    x = _to_input(
        torch.from_numpy(squares), pre, torch.device("cpu"), torch.channels_last, None, cfg, train=False
    )
    np.testing.assert_allclose(x.numpy(), pre.to_input(squares), rtol=1e-6, atol=1e-6)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_flip_mirrors_some_images_and_keeps_others():
    squares = torch.from_numpy(np.random.default_rng(1).integers(0, 256, size=(64, 32, 32), dtype=np.uint8))
    pre = Preprocessing(size=32, channels=3, mean=(0.0,), std=(1.0,))
    plain = _to_input(
        squares, pre, torch.device("cpu"), torch.contiguous_format, None, TrainConfig(), train=False
    )
    rng = torch.Generator().manual_seed(0)
    flipped = _to_input(
        squares, pre, torch.device("cpu"), torch.contiguous_format, rng, TrainConfig(flip=True), train=True
    )
    same = [torch.equal(flipped[i], plain[i]) for i in range(64)]
    mirrored = [torch.equal(flipped[i], plain[i].flip(-1)) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 10 < sum(mirrored) < 54


def test_affine_moves_pixels_but_keeps_the_shape():
    squares = torch.full((8, 32, 32), 200, dtype=torch.uint8)
    pre = Preprocessing(size=32, channels=3, mean=(0.0,), std=(1.0,))
    rng = torch.Generator().manual_seed(0)
    cfg = TrainConfig(flip=False, affine=True, affine_degrees=10, affine_translate=0.1)
    x = _to_input(squares, pre, torch.device("cpu"), torch.contiguous_format, rng, cfg, train=True)
    assert x.shape == (8, 3, 32, 32)
    assert (x < 200 / 255 - 1e-3).any()  # black (padding) comes in at some border
    assert x.max() <= 200 / 255 + 1e-5


def test_resume_after_sigkill_mid_run(tiny_run, toy_cache, tmp_path, capsys):
    result, first = tiny_run
    out = tmp_path / "killed"
    cfg = tiny_config(toy_cache, out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrdx", *cli_args(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "last_state.pt").exists():  # epoch 1 is complete: kill during epoch 2
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = torch.load(out / "last_state.pt", weights_only=True)["epoch"]
    assert killed_at < 3
    assert cli_main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert f"resuming {out} after epoch {killed_at}" in capsys.readouterr().err
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    _, meta = load_checkpoint(out / "last.safetensors")
    assert meta.provenance["epoch"] == 3
    load_checkpoint(out / "best.safetensors")
    # deterministic CPU training: the interrupted run ends where the uninterrupted one did
    a, _ = read_checkpoint(first / "last.safetensors")
    b, _ = read_checkpoint(out / "last.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def test_resume_changes_only_what_may_change(tiny_run, capsys):
    _, out = tiny_run
    assert cli_main(["train", "--resume", str(out), "--lr", "0.5"]) == 2
    assert "cannot change lr" in capsys.readouterr().err
    # more epochs may be asked for on resume; here the run is already complete at 3
    assert cli_main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0


def _error(capsys, args: list[str]) -> str:
    code = cli_main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_bad_configs_give_clear_errors(toy_cache, tmp_path, capsys):
    base = ["train", "--data", str(toy_cache), "--arch", "densenet-tiny", "--no-progress"]
    out = ["--out", str(tmp_path / "r")]
    assert "unknown finding name(s): 'Covid'" in _error(
        capsys, [*base, *out, "--findings", "Effusion", "Covid"]
    )
    assert "too small for DenseNet121" in _error(capsys, [*base, *out, "--image-size", "16"])
    assert "differs from the cache's 32 px" in _error(capsys, [*base, *out, "--image-size", "64"])
    missing = _error(capsys, ["train", "--data", str(tmp_path / "nope"), *out])
    assert "no such file or folder" in missing and "cxrdx prepare" in missing
    assert "no images in split 'test'" in _error(capsys, [*base, *out, "--val-split", "test"])
    assert "fewer than one batch" in _error(capsys, [*base, *out, "--batch-size", "512"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "not writable" in _error(capsys, [*base, "--out", str(blocker / "run")])
    bad_toml = tmp_path / "c.toml"
    bad_toml.write_text("batch_size = 8\nlearning_rate = 3\n")
    assert "unknown setting(s) ['learning_rate']" in _error(capsys, [*base, *out, "--config", str(bad_toml)])
    half = tmp_path / "half"
    half.mkdir()
    (half / "images.npy").write_bytes(b"")
    assert "cxrdx prepare" in _error(capsys, [*base, "--data", str(half), *out])


def test_freeze_bn_without_init_is_refused(toy_cache, tmp_path, capsys):
    from cxrdx.errors import ConfigError

    base = ["train", "--data", str(toy_cache), "--arch", "densenet-tiny", "--no-progress"]
    err = _error(capsys, [*base, "--out", str(tmp_path / "r"), "--freeze-bn"])
    assert "--freeze-bn" in err and "--init" in err and "statistics" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="--init"):  # the Python API refuses too
        train(tiny_config(toy_cache, tmp_path / "r2", freeze_bn=True))


def test_existing_run_is_not_overwritten(tiny_run, toy_cache, capsys):
    _, out = tiny_run
    err = _error(capsys, ["train", "--data", str(toy_cache), "--out", str(out), "--arch", "densenet-tiny"])
    assert "already holds a training run" in err and "--resume" in err


def test_config_file_is_merged_under_flags(toy_cache, tmp_path):
    from cxrdx.training.config import load_config_file, make_config

    toml = tmp_path / "c.toml"
    toml.write_text('[train]\nbatch-size = 8\nlr = 0.01\narch = "densenet-tiny"\nflip = false\n')
    cfg = make_config(
        load_config_file(toml), lr=0.02, data=str(toy_cache), out=str(tmp_path / "r")
    ).validate()
    assert (cfg.batch_size, cfg.lr, cfg.arch, cfg.flip) == (8, 0.02, "densenet-tiny", False)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"epochs": "many"}))
    from cxrdx.errors import ConfigError

    with pytest.raises(ConfigError, match="epochs"):
        make_config(load_config_file(js))


def test_early_stopping_stops_and_stays_stopped_on_resume(toy_cache, tmp_path):
    # lr so small that val loss cannot improve by min_delta: stop after the patience runs out
    cfg = tiny_config(toy_cache, tmp_path / "r", epochs=5, lr=1e-12, min_delta=0.01, early_stop_patience=1)
    result = train(cfg)
    assert result.stopped == "early_stopping" and result.epochs_completed == 2 and result.best_epoch == 1
    again = train(cfg, resume=True)
    assert again.stopped == "early_stopping" and again.epochs_completed == 2


def test_time_budget_stops_before_an_epoch_that_would_not_fit(toy_cache, tmp_path):
    result = train(tiny_config(toy_cache, tmp_path / "r", epochs=5, max_minutes=1e-4))
    assert result.stopped == "time_budget" and result.epochs_completed == 1
    assert (tmp_path / "r" / "best.safetensors").is_file()


def test_training_from_csv_splits_decodes_on_the_fly(phantom_dataset, tmp_path):
    from cxrdx.data.tables import read_labels, write_labels

    table = read_labels(phantom_dataset / "Data_Entry.csv")
    patients = table["patient"].unique()  # split by patient: a shared patient is refused (leakage)
    first = table["patient"].isin(patients[: len(patients) * 2 // 3])
    write_labels(table[first].reset_index(drop=True), tmp_path / "train.csv")
    write_labels(table[~first].reset_index(drop=True), tmp_path / "val.csv")
    cfg = tiny_config(
        tmp_path, tmp_path / "run", epochs=1, image_size=32, images=str(phantom_dataset / "images")
    )
    result = train(cfg)
    assert result.epochs_completed == 1
    _, meta = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta.provenance["data_kind"] == "csv" and meta.preprocessing.size == 32
    with pytest.raises(DataError, match="not found"):  # without --images the files cannot be found
        train(tiny_config(tmp_path, tmp_path / "run2", epochs=1, image_size=32))


def test_init_weights_are_loaded(tiny_run, toy_cache, tmp_path):
    _, first = tiny_run
    result = train(
        tiny_config(toy_cache, tmp_path / "r", epochs=1, lr=1e-12, init=str(first / "last.safetensors"))
    )
    trained, _ = read_checkpoint(result.last_path)
    source, _ = read_checkpoint(first / "last.safetensors")
    model, _ = load_checkpoint(result.last_path)
    params = [name for name, _ in model.named_parameters() if name.startswith("features.")]
    assert params
    for name in params:  # lr 1e-12: the features are still the init's
        torch.testing.assert_close(trained[name], source[name], rtol=0, atol=1e-6)


def test_init_by_registry_name_is_pulled_once_and_loaded(tiny_run, toy_cache, tmp_path, monkeypatch):
    """`train --init NAME`: the name is resolved through the weights registry (a loopback mirror here)."""
    import functools
    import http.server
    import threading

    from conftest import free_port

    from cxrdx.model import pretrained

    _, first = tiny_run
    served = tmp_path / "served"
    served.mkdir()
    (served / "tiny.safetensors").write_bytes((first / "last.safetensors").read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    entry = {
        "kind": "cxrdx",
        "file": "tiny.safetensors",
        "urls": ["https://example.invalid/tiny.safetensors"],
    }
    monkeypatch.setattr(pretrained, "registry", lambda: {"tiny-test": entry})
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXRDX_WEIGHTS_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("CXRDX_TRUST_UNVERIFIED_MIRROR", "1")  # an unpinned entry from a mirror
    try:
        result = train(tiny_config(toy_cache, tmp_path / "r", epochs=1, lr=1e-12, init="tiny-test"))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (tmp_path / "cache" / "tiny.safetensors").is_file()
    trained, _ = read_checkpoint(result.last_path)
    source, _ = read_checkpoint(first / "last.safetensors")
    names = [k for k in source if k.startswith("features.") and k.endswith("weight")]
    assert names
    for name in names:
        torch.testing.assert_close(trained[name], source[name], rtol=0, atol=1e-6)
