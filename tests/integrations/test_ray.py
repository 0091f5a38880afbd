"""``cxrdx predict --engine ray`` and the Ray building blocks, on a local Ray (2 CPUs, no dashboard).

Each result is compared with the single-process ``cxrdx predict`` on the same films (real NIH
PNGs when ../shared/data is there, else phantoms): the same rows, equal probabilities, every
image exactly once, also after an interrupted run resumed and after an actor's process was
killed mid-run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testkit import phantom_dicom, run_cli, tiny_checkpoint

from cxrdx.integrations.ray import PredictBatch, decode_images, predictions_of
from cxrdx.jobs import predict_ray as ray_job
from cxrdx.jobs.predict import Config as PredictJobConfig

SIZE = 32
N_FILMS = 15  # + one broken file


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cxrdx cache for this module, shared with the Ray workers (the ONNX export is made once)."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("CXRDX_CACHE")
    os.environ["CXRDX_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CXRDX_CACHE", None)
    else:
        os.environ["CXRDX_CACHE"] = old


@pytest.fixture(scope="module")
def ray_local(cache):
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"CXRDX_CACHE": str(cache)}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, cache) -> Path:
    return tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", SIZE, channels=3, thresholds={"Effusion": 0.5}
    )


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> Path:
    """N_FILMS real NIH films (links; one RGBA) or phantoms, in two folders, and one broken PNG."""
    from conftest import SHARED_DATA

    root = tmp_path_factory.mktemp("films")
    (root / "a").mkdir()
    (root / "b").mkdir()
    nih = sorted((SHARED_DATA / "nih" / "images").glob("*.png"))[:N_FILMS]
    for i in range(N_FILMS):
        dest = root / ("a" if i % 2 else "b") / f"film{i:02d}.png"
        if len(nih) == N_FILMS:
            dest.symlink_to(nih[i])
        else:
            from cxrdx.phantom.render import make_phantom

            img, _ = make_phantom(np.random.default_rng(i), 96, [])
            Image.fromarray(img).save(dest)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def rows_of(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def by_image(rows: list[dict]) -> dict[str, dict]:
    out = {r["image"]: r for r in rows}
    assert len(out) == len(rows), "an image was written twice"
    return out


@pytest.fixture(scope="module")
def single(ckpt, films, tmp_path_factory, cache) -> dict[str, dict[str, dict]]:
    """The single-process ``cxrdx predict`` results, csv and jsonl, by image."""
    out = {}
    folder = tmp_path_factory.mktemp("single")
    for fmt in ("csv", "jsonl"):
        target = folder / f"single.{fmt}"
        rc = _cli(ckpt, films, target, fmt)
        assert rc == 1  # the broken file
        out[fmt] = by_image(rows_of(target))
    assert len(out["csv"]) == N_FILMS + 1
    return out


def _cli(ckpt, films, out, fmt) -> int:
    """The single-process run: the same flags without the engine."""
    from cxrdx.cli import main

    return main([str(a) for a in _argv(ckpt, films, out, fmt)[:-2]])


def config(ckpt, paths, out, fmt, **kw) -> PredictJobConfig:
    return PredictJobConfig(
        weights=str(ckpt),
        paths=[str(p) for p in paths],
        recursive=True,
        format=fmt,
        out=str(out),
        backend="onnx",
        autotune=False,
        **kw,
    )


def test_ray_cli_equals_single_process(ray_local, ckpt, films, single, tmp_path, capsys):
    out = tmp_path / "ray.csv"
    rc, _, err = run_cli(capsys, _argv(ckpt, films, out, "csv"))
    assert rc == 1, err  # the broken file, as single-process
    assert "on ray" in err and f"{N_FILMS} image(s) predicted, 1 failed" in err
    assert by_image(rows_of(out)) == single["csv"]  # the same rows, the same text, every value equal
    assert not ray_job.parts_dir(str(out)).exists()  # merged and removed


def _argv(ckpt, films, out, fmt, *extra):
    """``cxrdx predict`` on Ray; its last two items are the engine flag (the single-process run drops them)."""
    return [
        *("predict", "--weights", ckpt, films, "-r", "--format", fmt, "--out", out),
        *("--backend", "onnx", "--no-autotune", *extra, "--engine", "ray"),
    ]


def test_interrupted_run_resumes(ray_local, ckpt, films, single, tmp_path):
    out = tmp_path / "ray.jsonl"

    def stop(rows: int) -> None:
        raise KeyboardInterrupt  # the driver dies after its first batch is safe

    with pytest.raises(KeyboardInterrupt):
        ray_job.predict_on_ray(config(ckpt, [films], out, "jsonl"), on_batch=stop)
    kept = by_image(rows_of(next(ray_job.parts_dir(str(out)).glob("run-*.jsonl"))))
    assert 0 < len(kept) < N_FILMS + 1 and not out.exists()

    summary = ray_job.predict_on_ray(config(ckpt, [films], out, "jsonl", resume=True))
    assert summary.ok + summary.failed == N_FILMS + 1 - len(kept)  # only the rest was predicted
    assert by_image(rows_of(out)) == single["jsonl"]

    again = ray_job.predict_on_ray(config(ckpt, [films], out, "jsonl", resume=True))
    assert again.ok + again.failed == 0  # all done: nothing predicted, the file kept
    assert by_image(rows_of(out)) == single["jsonl"]


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (this test's own Ray: raylet, workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _predict_actors() -> list[int]:
    found = []
    for pid in _descendants(os.getpid()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "PredictBatch" in title and "decode" not in title:
            found.append(pid)
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor's process in /proc")
def test_killed_actor_costs_only_its_batch(ray_local, ckpt, films, single, tmp_path):
    """The actor's process is killed (SIGKILL) mid-run: Ray restarts it and retries; every image once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # each film 8 times under its own name (hard links), so the job outlasts the actor's restart
    original: dict[str, str] = {}
    (tmp_path / "links").mkdir()
    for k, f in enumerate(sorted(films.rglob("*.png"))):
        for copy in range(8):
            link = tmp_path / "links" / f"{copy}_{k:02d}_{f.name}"
            try:
                os.link(f.resolve(), link)
            except OSError:  # another file system
                shutil.copyfile(f.resolve(), link)
            original[str(link)] = str(f)
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"path": sorted(original)}), manifest)  # the input as a manifest, output Parquet
    out = tmp_path / "ray.parquet"
    total = len(original)
    killed: list[int] = []
    after: set[int] = set()  # PredictBatch processes started after the kill: Ray's restart
    before = set(_predict_actors())  # an earlier job's actor may still be winding down
    stop = threading.Event()

    def watch() -> None:  # kill this job's actor 0.3 s after it appears: loading its model or predicting
        while not stop.is_set():
            new = [pid for pid in _predict_actors() if pid not in before]
            if new and not killed:
                time.sleep(0.3)
                os.kill(new[0], signal.SIGKILL)
                killed.append(new[0])
            elif killed:
                after.update(pid for pid in new if pid != killed[0])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = ray_job.predict_on_ray(config(ckpt, [manifest], out, "parquet"))
    finally:
        stop.set()
        watcher.join()
    assert killed, "the run ended before an actor could be killed"
    assert after, "no new actor process: Ray did not restart the killed actor"
    assert summary.ok + summary.failed == total
    got = by_image(rows_of(out))  # every image exactly once
    assert set(got) == set(original)
    for image, row in got.items():
        ref = single["csv"][original[image]]
        assert bool(row["error"]) == bool(ref["error"])
        for name in ("Atelectasis", "Effusion", "Pneumothorax"):
            if ref[name]:
                assert f"{row[name]:.6f}" == ref[name]
        if ref["Effusion_positive"]:
            assert row["Effusion_positive"] == (ref["Effusion_positive"] == "1")


def test_user_pipeline_with_dicom_decode_stage(ray_local, ckpt, tmp_path, shared_data_or_none):
    """The README's building blocks in a user's own map_batches: DICOM decoded as tasks, then PredictBatch."""
    from cxrdx.inference.predictor import Predictor

    paths = []
    for seed in range(3):
        path = tmp_path / f"phantom{seed}.dcm"
        phantom_dicom(seed, size=64).save_as(path, enforce_file_format=True)
        paths.append(str(path))
    if shared_data_or_none is not None:
        paths.append(str(shared_data_or_none / "dicom" / "siim_pneumothorax_sample.dcm"))
    ds = ray_local.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(decode_images, num_cpus=1, batch_size=2)
    ds = ds.map_batches(
        PredictBatch,
        fn_constructor_kwargs={"weights": str(ckpt), "backend": "onnx"},
        compute=ray_local.data.ActorPoolStrategy(size=1),
        batch_size=2,
    )
    ds = ds.materialize()
    rows = ds.take_all()
    assert "record" not in rows[0]
    ds.write_parquet(str(tmp_path / "predictions"))  # the README's last line
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "predictions").num_rows == len(paths)
    want = {p.source: p for p in Predictor.load(ckpt, backend="onnx").predict(paths)}
    assert sorted(r["image"] for r in rows) == sorted(paths)
    for row in rows:
        assert row["error"] == ""
        assert row["Effusion"] == want[row["image"]].probabilities["Effusion"]
        assert row["Effusion_positive"] == want[row["image"]].positive["Effusion"]


@pytest.fixture
def shared_data_or_none():
    from conftest import SHARED_DATA

    return SHARED_DATA if (SHARED_DATA / "dicom").is_dir() else None


def test_building_blocks_without_ray(ckpt, films):
    """decode_images and PredictBatch are plain callables on numpy batches: the Predictor's results, exactly."""
    from cxrdx.inference.predictor import Predictor

    files = sorted(str(p) for p in films.rglob("*.png"))
    batch = {"path": np.array(files)}
    decoded = decode_images(batch)
    assert decoded["error"][files.index(str(films / "b" / "broken.png"))]
    model = PredictBatch(str(ckpt), backend="onnx", autotune=False, record=True)
    want = {p.source: p.to_dict() for p in Predictor.load(ckpt, backend="onnx").predict(files)}
    for out in (model(decoded), model(batch)):  # the decode stage, or the paths read in the actor
        got = {p.source: p.to_dict() for p in predictions_of(out)}
        assert got.keys() == want.keys()
        for image, record in got.items():
            if want[image]["error"]:
                assert record["error"] and "broken.png" in record["error"]
            else:
                assert record == want[image]
        assert list(out["image"]) == files
    uris = [Path(f).as_uri() for f in files]  # through pyarrow's filesystems, as s3:// would be
    for out in (model(decode_images({"path": np.array(uris)})), model({"path": np.array(uris)})):
        for pred, f in zip(predictions_of(out), files, strict=True):
            assert pred.source == Path(f).as_uri()
            if want[f]["error"]:
                assert Path(f).as_uri() in pred.error
            else:
                assert pred.probabilities == want[f]["probabilities"]


def test_engine_errors(ckpt, films, tmp_path, capsys, monkeypatch):
    rc, _, err = run_cli(capsys, _argv(ckpt, films, tmp_path / "x.csv", "table"))
    assert rc == 2 and "--engine ray writes a file" in err
    rc, _, err = run_cli(capsys, _argv(ckpt, films, tmp_path / "x.csv", "csv", "--shard", "0/2"))
    assert rc == 2 and "drop --shard" in err
    rc, _, err = run_cli(capsys, _argv(ckpt, films, tmp_path / "x.csv", "csv")[:-2] + ["--format", "parquet"])
    assert rc == 2 and "--format parquet needs --engine ray" in err
    monkeypatch.setattr(ray_job, "ray_available", lambda: False)
    rc, _, err = run_cli(capsys, _argv(ckpt, films, tmp_path / "x.csv", "csv"))
    assert rc == 2 and "pip install 'cxrdx[ray]'" in err
    assert len(err.strip().splitlines()) == 1
