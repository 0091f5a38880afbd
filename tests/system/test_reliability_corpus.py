"""Every bad input through every door: the reader, `cxrdx predict` (a real subprocess) and the app's API.

For each corpus case (tests/corpus/bad_inputs.py) a refusal must be one line naming
the file and the problem, the CLI must exit non-zero (an error row when the file is
one of many), no Python traceback may reach stderr, and the next good input must
still work. Folders (empty, symlink loop) and label CSVs (missing columns, duplicate
ids, labels outside {0, 1}, unknown findings, a listed image missing on disk) go
through the scanner, `read_labels` and `cxrdx prepare`.

Policy for non-chest DICOMs (docs/reliability.md): the reader and `cxrdx predict`
accept a lateral view or a non-radiograph modality with a warning in the result;
the web app refuses a non-radiograph modality (CT, MR ...) and accepts a lateral
view with the warning.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import free_port
from corpus.bad_inputs import Case, make_corpus, make_folders, make_tables

from cxrdx.cli import main as cli_main
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

REPO = Path(__file__).resolve().parents[2]
APP_REFUSES = {"ct_modality.dcm": "modality is CT"}  # the app's stricter policy (see module doc)
NOT_UPLOADABLE = {"missing.png", "a_folder.png"}  # no file to send


def cxrdx(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "cxrdx", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def assert_no_traceback(text: str) -> None:
    assert "Traceback (most recent call last)" not in text, text[-3000:]


def assert_refusal(message: str, case: Case, name_only: bool = False) -> None:
    """One line, naming the file and containing the case's expected problem."""
    assert "\n" not in message.strip(), message
    assert (case.path.name if name_only else str(case.path)) in message, message
    assert case.message.lower() in message.lower(), f"{case.name}: expected {case.message!r} in {message!r}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Case]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    from corpus.bad_inputs import SIZE, chest
    from PIL import Image

    path = tmp_path_factory.mktemp("good") / "good.png"
    Image.fromarray(chest(SIZE, SIZE)).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=64))
    save_checkpoint(path, build_model("densenet-tiny"), meta)
    return path


# --------------------------------------------------------------------------- the reader


def test_reader_gives_every_case_its_outcome(corpus):
    from cxrdx.errors import ImageReadError
    from cxrdx.imaging.read import read_image

    assert len(corpus) >= 60
    for case in corpus:
        if case.expect == "ok":
            image, meta = read_image(case.path)
            assert image.shape == case.shape, case.name
            if case.message:
                assert any(case.message.lower() in w.lower() for w in meta.warnings), (
                    case.name,
                    meta.warnings,
                )
        else:
            with pytest.raises(ImageReadError) as info:
                read_image(case.path)
            assert_refusal(str(info.value), case)


def test_bombs_are_refused_without_allocating_them(corpus):
    """In a process capped at 1 GiB of address space, every bomb gets 'too large', not MemoryError."""
    bombs = [str(c.path) for c in corpus if c.name.startswith("bomb_")]
    assert len(bombs) == 4
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from cxrdx.errors import ImageReadError
        from cxrdx.imaging.read import read_image
        for path in {bombs!r}:
            try:
                read_image(path)
                print("READ", path)
            except ImageReadError as exc:
                print("REFUSED", exc)
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
        print("peak_kb", hwm.split()[1])  # this process's peak RSS (ru_maxrss would include pytest's)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    refused = [line for line in lines if line.startswith("REFUSED")]
    assert len(refused) == len(bombs) and all("too large" in line for line in refused), lines
    maxrss_mb = int(lines[-1].split()[1]) / 1024
    assert maxrss_mb < 300, f"reading the bombs peaked at {maxrss_mb:.0f} MB"


# --------------------------------------------------------------------------- folders


def test_folders_empty_and_looping(tmp_path):
    from cxrdx.imaging.find import find_images

    for folder in make_folders(tmp_path):
        assert len(find_images([folder.path], recursive=True)) == folder.images, folder.name
        assert len(find_images([folder.path], recursive=False)) == 0, folder.name  # images only in sub/


# --------------------------------------------------------------------------- cxrdx predict (subprocess)


def test_predict_cli_whole_corpus_in_one_run(corpus, good, checkpoint, tmp_path):
    """All cases + folders + a good file last: one row each, error rows for refusals, exit 1."""
    folders = make_folders(tmp_path / "folders")
    out = tmp_path / "rows.json"
    paths = [str(c.path) for c in corpus] + [str(f.path) for f in folders] + [str(good)]
    proc = cxrdx(
        "predict", "--weights", str(checkpoint), "--format", "json", "--out", str(out), "-r",
        "--backend", "torch", *paths,
    )  # fmt: skip
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    rows = json.loads(out.read_text())
    by_source = {r["image"]: r for r in rows}
    failed = 0
    for case in corpus:
        if case.name == "a_folder.png":  # a folder is scanned, not read: it holds no images
            row = by_source[str(case.path)]
            assert "no image files found" in row["error"] and str(case.path) in row["error"]
            failed += 1
            continue
        row = by_source[str(case.path)]
        if case.expect == "ok":
            assert row["error"] is None, (case.name, row["error"])
            assert list(row["probabilities"]) == list(FINDINGS)
            if case.message:
                assert any(case.message.lower() in w.lower() for w in row["warnings"]), (case.name, row)
        else:
            assert row["probabilities"] is None
            assert_refusal(row["error"], case)
            failed += 1
    empty = [f for f in folders if f.images == 0]
    for folder in empty:
        assert "no image files found" in by_source[str(folder.path)]["error"]
    loop = next(f for f in folders if f.name == "loop")
    assert str(loop.path / "sub" / "x.png") in by_source  # found once through the loop, no hang
    assert sum(str(loop.path) in s for s in by_source) == 1
    assert by_source[str(good)]["error"] is None  # the good file after every bad one
    assert f"{failed + len(empty)} failed" in proc.stderr


@pytest.mark.parametrize(
    "name", ["empty.png", "truncated.jpg", "bomb_100000x100000.png", "mpeg2.dcm", "structured_report.dcm"]
)
def test_predict_cli_single_bad_file(corpus, checkpoint, name):
    case = next(c for c in corpus if c.name == name)
    proc = cxrdx("predict", "--weights", str(checkpoint), "--backend", "torch", str(case.path))
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 1
    errors = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("ERROR:")]
    assert len(errors) == 1, proc.stdout
    assert_refusal(errors[0], case)
    assert "0 image(s) predicted, 1 failed" in proc.stderr


def test_predict_cli_empty_folder_and_missing_weights(tmp_path, checkpoint, good):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cxrdx("predict", "--weights", str(checkpoint), str(empty))
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxrdx predict: error:") and str(empty) in lines[0]
    assert "no image files found" in lines[0]


# --------------------------------------------------------------------------- the app's API


@pytest.fixture(scope="module")
def client(checkpoint, tmp_path_factory):
    from gradio_client import Client

    from cxrdx.app.ui import build_app, launch
    from cxrdx.inference.predictor import Predictor

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDX_CACHE", str(tmp_path_factory.mktemp("onnx")))
        predictor = Predictor.load(checkpoint, backend="torch")
    demo = build_app(predictor)
    _, url, _ = launch(demo, port=free_port(), block=False)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


def test_app_api_whole_corpus(client, corpus, good):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    tried = 0
    for case in corpus:
        if case.name in NOT_UPLOADABLE:
            continue
        tried += 1
        expect_error = case.expect == "error" or case.name in APP_REFUSES
        if expect_error:
            with pytest.raises(AppError) as info:
                client.predict(handle_file(str(case.path)), api_name="/predict")
            text = str(info.value)
            if case.name in APP_REFUSES:
                assert APP_REFUSES[case.name] in text and case.path.name in text, text
            else:
                assert_refusal(text, case, name_only=True)
            assert "/tmp/" not in text  # never the server's temp path
        else:
            result = client.predict(handle_file(str(case.path)), api_name="/predict")
            assert result["error"] is None and list(result["probabilities"]) == list(FINDINGS), case.name
            if case.message:
                assert any(case.message.lower() in w.lower() for w in result["warnings"]), (case.name, result)
    assert tried == len(corpus) - len(NOT_UPLOADABLE)
    result = client.predict(handle_file(str(good)), api_name="/predict")
    assert result["error"] is None and result["image"] == good.name


# --------------------------------------------------------------------------- label tables


def test_label_tables(tmp_path, capsys):
    """read_labels refuses each broken table with its problem; prepare skips a listed-but-absent image."""
    from cxrdx.data.tables import read_labels
    from cxrdx.errors import CxrdxError

    for case in make_tables(tmp_path / "tables"):
        if case.expect == "error":
            with pytest.raises(CxrdxError) as info:
                read_labels(case.path, case.images)
            text = str(info.value)
            assert str(case.path) in text and case.message in text, (case.name, text)
            # the same refusal through a CLI that reads tables: one line, exit 2
            assert cli_main(["stats", "--labels", str(case.path), "--images", str(case.images)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and case.message in err[0], (case.name, err)
        elif case.name == "image_missing_on_disk":
            out = tmp_path / f"cache_{case.name}"
            argv = ["prepare", "--labels", str(case.path), "--images", str(case.images), "--size", "32",
                    "--out", str(out), "--workers", "0", "--no-progress"]  # fmt: skip
            assert cli_main(argv) == 2  # missing images stop prepare unless --allow-missing
            err = capsys.readouterr().err
            assert "absent.png" in err and "not in --images" in err and "--allow-missing" in err
            assert cli_main([*argv, "--allow-missing"]) == 0
            err = capsys.readouterr().err
            assert "absent.png" in err and "not found" in err
            info = json.loads((out / "cache.json").read_text())
            listed = list(csv.reader((out / "not_cached.csv").open()))
            assert info["cached"] == 4 and info["not_cached"] == 1 and listed[1][0] == "absent.png"
        else:
            assert len(read_labels(case.path, case.images)) == 4
