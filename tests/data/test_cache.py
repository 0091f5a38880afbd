"""`cxrdx prepare`: the cache holds letterboxed images, resumes after a kill, and reports bad files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cxrdx.data.prepare as prepare_mod
from cxrdx.cli import main as cli_main
from cxrdx.data.cache import is_cache, open_cache
from cxrdx.data.loaders import pixel_stats
from cxrdx.data.prepare import prepare_cache
from cxrdx.data.tables import read_labels, write_labels
from cxrdx.errors import DataError
from cxrdx.imaging.letterbox import letterbox
from cxrdx.imaging.read import read_image
from cxrdx.labels import FINDINGS

SIZE = 48


@pytest.fixture(scope="module")
def splits(phantom_dataset, tmp_path_factory) -> dict[str, Path]:
    """train.csv (80 images) and val.csv (40) of the phantom set, in the generic label format."""
    table = read_labels(phantom_dataset / "Data_Entry.csv")
    folder = tmp_path_factory.mktemp("splits")
    out = {}
    val = table.iloc[80:].assign(patient="val-" + table["patient"].iloc[80:].astype(str))  # patient-disjoint
    for name, part in (("train", table.iloc[:80]), ("val", val)):
        out[name] = write_labels(part.reset_index(drop=True), folder / f"{name}.csv")
    return out


@pytest.fixture(scope="module")
def prepared(splits, phantom_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    result = prepare_cache(
        [splits["train"], splits["val"]],
        out,
        size=SIZE,
        images=phantom_dataset / "images",
        workers=2,
        progress=False,
    )
    return result, out


def test_cache_holds_letterboxed_images_and_labels(prepared, phantom_dataset):
    result, out = prepared
    assert result.cached == 120 and result.failures == [] and result.counts == {"train": 80, "val": 40}
    cache = open_cache(out)
    assert cache.size == SIZE and cache.images.shape == (120, SIZE, SIZE) and cache.images.dtype == np.uint8
    truth = read_labels(phantom_dataset / "Data_Entry.csv", images_dir=phantom_dataset / "images")
    index = cache.index.set_index("image")
    np.testing.assert_array_equal(
        index.loc[truth["image"], list(FINDINGS)].to_numpy(), truth[list(FINDINGS)].to_numpy()
    )
    assert list(cache.index["split"]) == ["train"] * 80 + ["val"] * 40
    for i in (0, 57, 119):
        image, _ = read_image(cache.index.at[i, "path"])
        square, _ = letterbox(image, SIZE)
        stored = cache.images[cache.index.at[i, "row"]].astype(np.float64) / 255
        assert np.abs(stored - square).max() <= 0.5 / 255 + 1e-6  # only uint8 rounding
    train = cache.subset("train")
    assert len(train.index) == 80 and train.labels.shape == (80, len(FINDINGS))
    with pytest.raises(DataError, match="no images in split 'test'"):
        cache.subset("test")


def test_batches_and_pixel_stats(prepared):
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    _, out = prepared
    train = open_cache(out).subset("train")
    source = train.batches()
    squares, labels = source[[5, 0, 3]]
    np.testing.assert_array_equal(squares, train.images[train.rows[[5, 0, 3]]])
    np.testing.assert_array_equal(labels, train.labels[[5, 0, 3]])
    # through a real DataLoader worker (the memmap is reopened there)
    loader = DataLoader(
        source, sampler=BatchSampler(SequentialSampler(range(80)), 32, False), batch_size=None, num_workers=1
    )
    got = np.concatenate([b[0].numpy() for b in loader])
    np.testing.assert_array_equal(got, train.images[train.rows])
    mean, std = pixel_stats(source)
    pixels = train.images[train.rows] / 255.0
    assert mean == pytest.approx(pixels.mean(), abs=1e-9) and std == pytest.approx(pixels.std(), abs=1e-9)


def test_rerun_of_a_finished_cache_decodes_nothing(prepared, splits, phantom_dataset):
    _, out = prepared
    again = prepare_cache(
        [splits["train"], splits["val"]],
        out,
        size=SIZE,
        images=phantom_dataset / "images",
        workers=0,
        progress=False,
    )
    assert again.decoded == 0 and again.cached == 120


def test_other_job_in_the_same_folder_needs_overwrite(prepared, splits, phantom_dataset):
    _, out = prepared
    with pytest.raises(DataError, match="--overwrite"):
        prepare_cache([splits["train"]], out, size=SIZE, images=phantom_dataset / "images", progress=False)


def test_resume_after_sigkill_skips_finished_rows(splits, phantom_dataset, prepared, tmp_path, monkeypatch):
    """A prepare killed with SIGKILL after 40 images; the rerun decodes only the other 80."""
    out = tmp_path / "c"
    script = textwrap.dedent(
        f"""
        import os, signal
        import cxrdx.data.prepare as c
        c.SAVE_EVERY_S = 0.0  # make progress durable after every image, then die without any cleanup
        real, calls = c._decode_row, [0]
        def dying(task):
            calls[0] += 1
            if calls[0] > 40:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(task)
        c._decode_row = dying
        c.prepare_cache([{str(splits["train"])!r}, {str(splits["val"])!r}], {str(out)!r}, size={SIZE},
                        images={str(phantom_dataset / "images")!r}, workers=0, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with pytest.raises(DataError, match="unfinished"):
        open_cache(out)
    calls = []
    real = prepare_mod._decode_row
    monkeypatch.setattr(prepare_mod, "_decode_row", lambda task: calls.append(task[0]) or real(task))
    result = prepare_cache(
        [splits["train"], splits["val"]],
        out,
        size=SIZE,
        images=phantom_dataset / "images",
        workers=0,
        progress=False,
    )
    assert len(calls) == 80 and min(calls) == 40  # rows 0-39 were kept from the killed run
    assert result.cached == 120 and result.decoded == 80
    _, reference = prepared
    np.testing.assert_array_equal(open_cache(out).images, open_cache(reference).images)


def test_interrupted_run_saves_progress(splits, phantom_dataset, tmp_path, monkeypatch):
    out = tmp_path / "c"
    real, calls = prepare_mod._decode_row, []

    def failing(task):
        calls.append(task[0])
        if len(calls) == 30:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_mod, "_decode_row", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(
            [splits["train"]], out, size=SIZE, images=phantom_dataset / "images", workers=0, progress=False
        )
    monkeypatch.setattr(prepare_mod, "_decode_row", real)
    result = prepare_cache(
        [splits["train"]], out, size=SIZE, images=phantom_dataset / "images", workers=0, progress=False
    )
    assert result.decoded == 80 - 29 and result.cached == 80


def test_unreadable_images_are_reported_and_skipped(splits, phantom_dataset, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    table = pd.read_csv(splits["val"], dtype=str)
    for name in table["image"][:5]:
        os.symlink(phantom_dataset / "images" / name, images / name)
    (images / table["image"][5]).write_bytes(b"this is not a PNG at all")
    part = table.iloc[:7]  # 5 good, 1 corrupt, 1 missing
    csv = tmp_path / "val.csv"
    part.to_csv(csv, index=False)
    out = tmp_path / "c"
    argv = ["prepare", "--labels", str(csv), "--images", str(images), "--size", "32", "--out", str(out),
            "--workers", "0", "--no-progress"]  # fmt: skip
    # a listed image missing on disk stops the job before decoding: count, name, the list file
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "1 of the 7 images listed are not in --images" in err and table["image"][6] in err
    assert "--allow-missing" in err and "not_cached.csv" in err and len(err.strip().splitlines()) == 1
    assert not (out / "cache.json").exists() and not (out / "images.npy").exists()
    code = cli_main([*argv, "--allow-missing"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "2 of 7 image(s) left out (1 not found, 1 unreadable)" in captured.err
    assert table["image"][5] in captured.err and table["image"][6] in captured.err
    assert "file not found" in captured.err
    listed = pd.read_csv(out / "not_cached.csv", dtype=str)
    assert set(listed["image"]) == {table["image"][5], table["image"][6]}
    cache = open_cache(out)
    assert list(cache.index["image"]) == list(part["image"][:5])
    assert cache.info["not_cached"] == 2 and "failures" not in cache.info  # the list is not_cached.csv
    assert np.load(out / "images.npy", mmap_mode="r").shape[0] == 6  # the missing image has no row
    assert "cached 5 images (val: 5)" in captured.out

    only_bad = tmp_path / "bad.csv"
    part.iloc[5:].to_csv(only_bad, index=False)
    code = cli_main(
        [
            "prepare",
            "--labels",
            str(only_bad),
            "--images",
            str(images),
            "--size",
            "32",
            "--out",
            str(tmp_path / "c2"),
            "--workers",
            "0",
            "--no-progress",
            "--allow-missing",
        ]
    )
    assert code == 2
    assert "none of the 2 images could be read, so nothing was cached" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "c2").iterdir()) == ["not_cached.csv"]  # no cache files


def test_prepare_with_most_images_missing_prints_a_summary_not_every_name(splits, tmp_path, capsys):
    table = pd.read_csv(splits["val"], dtype=str)
    images = tmp_path / "partial"
    images.mkdir()  # an empty folder: as if the user had not downloaded these archives yet
    csv = tmp_path / "val.csv"
    table.to_csv(csv, index=False)
    out = tmp_path / "c"
    argv = ["prepare", "--labels", str(csv), "--images", str(images), "--size", "32", "--out", str(out),
            "--workers", "0", "--no-progress"]  # fmt: skip
    for extra in ([], ["--allow-missing"]):  # nothing there: an error either way
        assert cli_main(argv + extra) == 2
        err = capsys.readouterr().err
        assert f"{len(table)} of the {len(table)} images listed are not in --images" in err
        assert f"and {len(table) - 5} more" in err and table["image"][len(table) - 1] not in err
        assert sorted(p.name for p in out.iterdir()) == ["not_cached.csv"]
        assert len(pd.read_csv(out / "not_cached.csv")) == len(table)


def test_open_cache_errors_say_to_run_prepare(tmp_path):
    with pytest.raises(DataError, match="cxrdx prepare"):
        open_cache(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a cxrdx cache"):
        open_cache(tmp_path / "empty")


def test_is_cache_counts_finished_and_unfinished_caches_only(prepared, tmp_path):
    _, out = prepared
    assert is_cache(out)
    assert not is_cache(tmp_path / "missing") and not is_cache(out / "cache.json")
    (tmp_path / "empty").mkdir()
    assert not is_cache(tmp_path / "empty")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / ".prepare.json").write_text("{}")
    assert is_cache(tmp_path / "unfinished")  # so open_cache can say it is unfinished


def test_prepare_cli_errors(tmp_path, capsys):
    assert cli_main(["prepare", "--labels", str(tmp_path / "x.csv"), "--out", str(tmp_path / "c")]) == 2
    assert "no such label file" in capsys.readouterr().err
    assert (
        cli_main(
            ["prepare", "--labels", str(tmp_path / "x.csv"), "--size", "8", "--out", str(tmp_path / "c")]
        )
        == 2
    )
    assert "too small" in capsys.readouterr().err
