"""`cxrdx predict` at archive scale: streamed CSV / JSON Lines, --resume after a crash, shards and the merge."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testkit import run_cli, tiny_checkpoint

from cxrdx.inference import shards
from cxrdx.inference.stream import read_done

SIZE = 32
N_IMAGES = 11


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", SIZE, channels=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """N_IMAGES small gray PNGs in two subfolders (names repeat across them), one unreadable file."""
    root = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(1)
    for i in range(N_IMAGES - 1):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8)).save(sub / f"img{i // 2}.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def predict(capsys, ckpt, folder, out, *extra) -> tuple[int, str]:
    rc, _, err = run_cli(
        capsys,
        [
            "predict",
            "--weights",
            ckpt,
            folder,
            "-r",
            "--out",
            out,
            "--backend",
            "torch",
            "--batch-size",
            "3",
            *extra,
        ],
    )
    return rc, err


def rows_of(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def by_image(rows: list[dict]) -> dict[str, dict]:
    out = {r["image"]: r for r in rows}
    assert len(out) == len(rows), "an image was written twice"
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory, ckpt, folder) -> dict[str, Path]:
    """One ordinary single-process run per streamed format: the reference."""
    from cxrdx.cli import main

    out = {}
    for fmt in ("csv", "jsonl"):
        path = tmp_path_factory.mktemp("single") / f"all.{fmt}"
        args = [
            "predict",
            "--weights",
            ckpt,
            folder,
            "-r",
            "--out",
            path,
            "--format",
            fmt,
            "--backend",
            "torch",
        ]
        assert main([str(a) for a in args]) == 1  # the broken file
        out[fmt] = path
    return out


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_stream_has_every_image_once_and_the_error_row(single, fmt):
    rows = by_image(rows_of(single[fmt]))
    assert len(rows) == N_IMAGES
    broken = [r for name, r in rows.items() if name.endswith("broken.png")]
    assert len(broken) == 1 and broken[0]["error"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_after_a_crash_redoes_only_the_torn_batch(ckpt, folder, single, tmp_path, capsys, fmt):
    reference = by_image(rows_of(single[fmt]))
    out = tmp_path / f"res.{fmt}"
    data = single[fmt].read_bytes()
    lines = data.split(b"\n")
    keep = 5 if fmt == "csv" else 4  # the header + 4 rows, then half a row: what a crash leaves
    out.write_bytes(b"\n".join(lines[:keep]) + b"\n" + lines[keep][:7])
    done, end = read_done(out, fmt, list(next(iter(reference.values()))) if fmt == "csv" else None)
    assert len(done) == 4 and end == len(b"\n".join(lines[:keep]) + b"\n")
    rc, err = predict(capsys, ckpt, folder, out, "--format", fmt, "--resume")
    assert rc == 1 and "4 image(s) already in" in err
    assert "6 image(s) predicted, 1 failed" in err
    got = by_image(rows_of(out))
    assert got.keys() == reference.keys()
    for name, row in got.items():
        if row.get("error"):
            continue
        a = row["probabilities"] if fmt == "jsonl" else row
        b = reference[name]["probabilities"] if fmt == "jsonl" else reference[name]
        assert abs(float(a["Effusion"]) - float(b["Effusion"])) <= 1e-5
    # a second resume has nothing left to do
    rc, err = predict(capsys, ckpt, folder, out, "--format", fmt, "--resume")
    assert f"{N_IMAGES} image(s) already in" in err and "0 image(s) predicted, 0 failed" in err
    assert len(rows_of(out)) == N_IMAGES


def test_without_resume_the_file_starts_afresh(ckpt, folder, single, tmp_path, capsys):
    out = tmp_path / "x.csv"
    out.write_text("image,error\nold.png,\n")
    predict(capsys, ckpt, folder, out, "--format", "csv")
    assert "old.png" not in by_image(rows_of(out)) and len(rows_of(out)) == N_IMAGES


def test_resume_refuses_a_file_with_other_columns(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "other.csv"
    out.write_text("image,score\na.png,0.5\n")
    rc, err = predict(capsys, ckpt, folder, out, "--format", "csv", "--resume")
    assert rc == 2 and "columns" in err and out.read_text() == "image,score\na.png,0.5\n"


@pytest.mark.parametrize("extra", [["--format", "json", "--resume"], ["--format", "table", "--shard", "0/2"]])
def test_resume_and_shards_need_a_streamed_format(ckpt, folder, tmp_path, capsys, extra):
    rc, err = predict(capsys, ckpt, folder, tmp_path / "o.txt", *extra)
    assert rc == 2 and "csv or jsonl" in err


def test_shares_are_disjoint_sorted_slices_covering_everything():
    items = [f"f{i:03d}" for i in range(17)][::-1]
    parts = [shards.share(items, i, 4) for i in range(4)]
    assert sum(parts, []) == sorted(items)
    assert {len(p) for p in parts} <= {4, 5}
    assert shards.parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(Exception, match="--shard"):
            shards.parse_shard(bad)


def test_shards_in_turn_then_the_last_merges(ckpt, folder, single, tmp_path, capsys):
    out = tmp_path / "sharded.csv"
    rc0, err0 = predict(capsys, ckpt, folder, out, "--format", "csv", "--shard", "0/2")
    assert not out.exists() and "written when the last of the 2 shards finishes" in err0
    assert shards.done_path(shards.part_path(out, 0, 2)).is_file()
    rc1, err1 = predict(capsys, ckpt, folder, out, "--format", "csv", "--shard", "1/2")
    assert "all 2 parts merged" in err1
    assert not list(tmp_path.glob("sharded.part-*"))
    got, ref = rows_of(out), rows_of(single["csv"])
    assert [r["image"] for r in got] == sorted(r["image"] for r in ref)  # the merge is in sorted order
    assert by_image(got).keys() == by_image(ref).keys()
    # a rerun with --resume finds everything in the merged file and keeps it
    predict(capsys, ckpt, folder, out, "--format", "csv", "--shard", "0/2", "--resume")
    _, err = predict(capsys, ckpt, folder, out, "--format", "csv", "--shard", "1/2", "--resume")
    assert "0 image(s) predicted" in err and "merged" in err
    assert [r["image"] for r in rows_of(out)] == [r["image"] for r in got]


def test_two_torchrun_ranks_at_once_equal_one_process(ckpt, folder, single, tmp_path):
    """Two processes with torchrun's environment, run concurrently: the merged union is the single run."""
    out = tmp_path / "ranks.jsonl"
    env = {**os.environ, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "CXRDX_CACHE": str(tmp_path / "c")}
    cmd = [sys.executable, "-m", "cxrdx", "predict", "--weights", str(ckpt), str(folder), "-r"]
    cmd += ["--out", str(out), "--format", "jsonl", "--backend", "torch", "--batch-size", "2"]
    procs = [
        subprocess.Popen(
            cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True
        )
        for r in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode in (0, 1) for p in procs), errs
    predicted = 0
    for err in errs:
        line = next(ln for ln in err.splitlines() if "image(s) predicted" in ln)
        predicted += int(line.split("predict: ")[1].split()[0]) + int(line.split("predicted, ")[1].split()[0])
    assert predicted == N_IMAGES  # nothing processed twice
    assert sum("merged" in e for e in errs) == 1
    got, ref = by_image(rows_of(out)), by_image(rows_of(single["jsonl"]))
    assert got.keys() == ref.keys()
    for name, row in got.items():
        if row["error"] is None:
            np.testing.assert_allclose(
                list(row["probabilities"].values()), list(ref[name]["probabilities"].values()), atol=1e-5
            )


def test_resume_leaves_a_file_it_did_not_write_alone(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "array.jsonl"
    text = '[\n  {"image": "a.png"},\n  {"image": "b.png"}\n]\n'  # a --format json file
    out.write_text(text)
    rc, err = predict(capsys, ckpt, folder, out, "--format", "jsonl", "--resume")
    assert rc == 2 and "not a jsonl file written by `cxrdx predict`" in err and out.read_text() == text


def test_killed_mid_run_then_resumed_gives_every_image_once(ckpt, single, tmp_path):
    """SIGKILL while streaming: the file holds only complete rows; --resume finishes the job."""
    import signal
    import time

    many = tmp_path / "many"
    many.mkdir()
    rng = np.random.default_rng(2)
    for i in range(120):
        Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(many / f"m{i:03d}.png")
    out = tmp_path / "killed.csv"
    env = {**os.environ, "CXRDX_CACHE": str(tmp_path / "c")}
    cmd = [sys.executable, "-m", "cxrdx", "predict", "--weights", str(ckpt), str(many), "--out", str(out)]
    cmd += ["--format", "csv", "--backend", "torch", "--batch-size", "2", "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_file() and out.read_bytes().count(b"\n") > 10:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    rows = rows_of(out)  # a valid CSV, whatever moment the kill came
    assert len(by_image(rows)) == len(rows) and all(r["Effusion"] for r in rows)
    if proc.returncode == -signal.SIGKILL:
        assert len(rows) < 120  # it was killed mid-run
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(by_image(rows_of(out))) == sorted(str(p) for p in many.glob("*.png"))
