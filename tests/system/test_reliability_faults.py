"""Faults: training killed with SIGKILL anywhere and resumed, a full disk, an unwritable folder,
and `cxrdx prepare` killed at random moments and rerun.

Training runs `cxrdx train` as a real subprocess (densenet-tiny, 48 px, a few batches
per epoch). Kill points: random moments while an epoch runs, and deterministic kills
in the middle of writing each file of an epoch's checkpoint set (the temporary file
is half written, then the process SIGKILLs itself before the rename). A driver
(``DRIVER`` below) installs that hook around ``cxrdx.model.atomic_write`` and then
runs the real CLI, so nothing in the package is changed for the test.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import load_checkpoint, read_checkpoint

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 5
SIZE = 48

DRIVER = textwrap.dedent(
    """
    import errno, json, os, signal, sys
    from pathlib import Path
    import cxrdx.files as m  # every atomic write goes through it, looked up at call time

    target, at, mode = os.environ.get("KILL_FILE"), int(os.environ.get("KILL_EPOCH", "0")), os.environ.get("KILL_MODE")

    def epoch_of(tmp, name):
        if name.endswith(".json"):
            return len(json.loads(Path(tmp).read_text()))
        if name.endswith(".pt"):
            import torch
            return int(torch.load(tmp, weights_only=True)["epoch"])
        from safetensors import safe_open
        with safe_open(tmp, framework="pt") as fh:
            return int(json.loads(fh.metadata()["cxrdx"])["provenance"]["epoch"])

    real = m.atomic_write

    def hooked(path, write):
        if Path(path).name != target:
            return real(path, write)

        def torn(tmp):
            write(tmp)
            if epoch_of(tmp, target) >= at:  # this epoch's file: tear it and die before the rename
                os.truncate(tmp, os.path.getsize(tmp) // 2)
                if mode == "enospc":
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
                os.kill(os.getpid(), signal.SIGKILL)

        return real(path, torn)

    m.atomic_write = hooked
    from cxrdx.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def make_cache(out: Path, n_train: int = 160, n_val: int = 32, seed: int = 0) -> Path:
    """The training tests' toy cache (two learnable findings) at this module's size."""
    from training.test_train import make_toy_cache  # tests/ is on sys.path

    return make_toy_cache(out, n_train=n_train, n_val=n_val, size=SIZE, seed=seed)


def train_args(cache: Path, out: Path) -> list[str]:
    return [
        "train", "--data", str(cache), "--out", str(out), "--arch", "densenet-tiny", "--epochs", str(EPOCHS),
        "--batch-size", "16", "--lr", "1e-3", "--deterministic", "--no-progress", "--workers", "0",
        "--threads", "1",
    ]  # fmt: skip


def start(args: list[str], driver: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(driver), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        cwd=REPO,
    )


def epochs_logged(text: str) -> list[int]:
    return [int(m) for m in re.findall(rf"^epoch (\d+)/{EPOCHS}: train loss", text, flags=re.M)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("toy") / "cache")


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


@pytest.fixture(scope="module")
def reference(cache, driver, tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = start(train_args(cache, out), driver)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    assert epochs_logged(text) == list(range(1, EPOCHS + 1))
    return out


def check_run_dir(out: Path) -> int:
    """After any kill: best (if any) loads, history has no repeats, no temp file is a checkpoint."""
    if (out / "best.safetensors").exists():
        load_checkpoint(out / "best.safetensors")
    if (out / "last.safetensors").exists():
        load_checkpoint(out / "last.safetensors")
    done = 0
    if (out / "last_state.pt").exists():
        done = int(torch.load(out / "last_state.pt", weights_only=True)["epoch"])
    if (out / "history.json").exists():
        hist = [h["epoch"] for h in json.loads((out / "history.json").read_text())]
        # history.json is written after the state: it may lag it (resume rewrites it), never lead it
        assert hist == list(range(1, len(hist) + 1)) and len(hist) <= done, (hist, done)
    stray = [p.name for p in out.iterdir() if p.name.endswith(".safetensors") and p.name[0] == "."]
    assert not stray, stray
    return done


def test_training_survives_sigkill_anywhere(cache, driver, reference, tmp_path):
    """Kill one run 6 times (at random mid-epoch, inside each file's write), resume each time."""
    out = tmp_path / "run"
    rng = random.Random(int(os.environ.get("CXRDX_FAULT_SEED", "7")))
    # (how, detail): random moment during epoch k, or the n-th write of a file (= epoch n)
    kills = [
        ("during_epoch", 1),
        ("write", ("last_state.pt", 2)),
        ("during_epoch", 3),
        ("write", ("best.safetensors", 1)),  # the next improvement (or a resume's repair of best)
        ("write", ("last.safetensors", 4)),
        ("write", ("history.json", EPOCHS)),  # the final epoch's history: only a resume can repair it
    ]
    log = ""
    announced = 0  # highest epoch whose "epoch k/N" line any run printed
    survived = 0
    for how, detail in kills:
        resume = (out / "config.json").exists()
        args = ["train", "--resume", str(out), "--no-progress"] if resume else train_args(cache, out)
        before = check_run_dir(out) if out.exists() else 0
        if how == "write":
            name, nth = detail
            proc = start(args, driver, KILL_FILE=name, KILL_EPOCH=str(nth), KILL_MODE="sigkill")
            text, _ = proc.communicate(timeout=300)
        else:
            proc = start(args, driver)
            lines = []
            # wait until epoch `detail` is under way (the previous epoch's line, or startup), then a random delay
            trigger = f"epoch {detail - 1}/{EPOCHS}: train loss" if detail > 1 else "training densenet-tiny"
            if resume and before >= detail - 1:
                trigger = "resuming"
            for line in proc.stdout:
                lines.append(line)
                if trigger in line:
                    break
            time.sleep(rng.uniform(0.05, 1.0))
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate(timeout=60)
            text = "".join(lines) + rest
        log += text
        assert "Traceback" not in text, text
        if proc.returncode == 0:  # the kill came too late: the run finished
            break
        assert proc.returncode == -signal.SIGKILL, text
        survived += 1
        if resume:
            # (a kill inside a checkpoint write can land before this line: resume first
            # rewrites a lagging last/best.safetensors, which is one more kill point)
            m = re.search(r"resuming \S+ after epoch (\d+)", text)
            # nothing announced as done is lost; at most the interrupted epoch is redone
            assert m is None or int(m.group(1)) >= announced, text
        announced = max([announced, *epochs_logged(text)])
        done = check_run_dir(out)
        assert done >= announced  # an epoch is announced only after its state is written
    assert survived == len(kills), f"only {survived} kills landed before the run finished"
    proc = start(["train", "--resume", str(out), "--no-progress"], driver)
    text, _ = proc.communicate(timeout=300)
    log += text
    assert proc.returncode == 0, text
    assert "Traceback" not in log
    assert check_run_dir(out) == EPOCHS
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    _, meta = load_checkpoint(out / "last.safetensors")
    assert meta.provenance["epoch"] == EPOCHS
    load_checkpoint(out / "best.safetensors")
    # deterministic CPU training: six interruptions later, the weights are the uninterrupted run's
    a, _ = read_checkpoint(reference / "last.safetensors")
    b, _ = read_checkpoint(out / "last.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    print(f"kills survived: {survived}")


def test_disk_full_during_a_checkpoint_keeps_the_previous_best(cache, driver, tmp_path):
    """ENOSPC while writing epoch 2's last.safetensors: one-line error, epoch 1's file intact, resumable."""
    out = tmp_path / "run"
    proc = start(
        train_args(cache, out), driver, KILL_FILE="last.safetensors", KILL_EPOCH="2", KILL_MODE="enospc"
    )
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("cxrdx train: error:")]
    assert len(errors) == 1 and "last.safetensors" in errors[0] and "disk full" in errors[0], text
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # the torn temp file is gone
    _, meta = load_checkpoint(out / "last.safetensors")
    assert meta.provenance["epoch"] == 1  # the previous one, whole
    load_checkpoint(out / "best.safetensors")
    from cxrdx.cli import main

    assert main(["train", "--resume", str(out), "--no-progress", "--epochs", "2"]) == 0  # space freed
    _, meta = load_checkpoint(out / "last.safetensors")
    assert meta.provenance["epoch"] == 2


def _no_bigger_files(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big write then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_files_too_big_for_the_disk_give_a_clear_error(cache, tmp_path):
    """The real CLI with a 100 kB file-size limit: the 300 kB resume state cannot be written."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cxrdx", *train_args(cache, out)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_no_bigger_files(100_000),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cxrdx train: error: cannot write") and "disk full" in last, last
    assert not (out / "best.safetensors").exists() and not (out / "last_state.pt").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, one image, and a label CSV over it, for the commands that write outputs."""
    from PIL import Image

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    d = tmp_path_factory.mktemp("inputs")
    save_checkpoint(
        d / "m.safetensors",
        build_model("densenet-tiny"),
        CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=32)),
    )
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(d / "a.png")
    csv = d / "t.csv"
    csv.write_text("image,patient," + ",".join(FINDINGS) + "\n" + "a.png,1," + ",".join("0" * 14) + "\n")
    return {"weights": d / "m.safetensors", "image": d / "a.png", "csv": csv, "dir": d}


@pytest.mark.parametrize(
    "command", ["train", "prepare", "predict", "evaluate", "explain", "export", "import"]
)
def test_unwritable_output_gives_one_line(cache, tiny_inputs, tmp_path, command, capsys):
    """--out whose parent is a file: one line naming the path, exit 2, no traceback (in process)."""
    from cxrdx.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "out"  # cannot be created: its parent is a file
    w, img, csv = str(tiny_inputs["weights"]), str(tiny_inputs["image"]), str(tiny_inputs["csv"])
    args = {
        "train": train_args(cache, out),
        "prepare": ["prepare", "--labels", csv, "--images", str(tiny_inputs["dir"]), "--out", str(out),
                    "--size", "32", "--no-progress"],
        "predict": ["predict", "--weights", w, img, "--out", str(out), "--backend", "torch"],
        "evaluate": ["evaluate", "--weights", w, "--data", csv, "--images", str(tiny_inputs["dir"]),
                     "--out", str(out), "--n-boot", "5", "--no-progress"],
        "explain": ["explain", "--weights", w, img, "--out", str(out)],
        "export": ["export", "--weights", w, "--onnx", str(out)],
        "import": ["import", "--from", "cxrdx", w, "--out", str(out)],
    }[command]  # fmt: skip
    t0 = time.monotonic()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0] and err[0].startswith(f"cxrdx {command}: error:"), err
    assert time.monotonic() - t0 < 30


# --------------------------------------------------------------------------- prepare


def _png_table(folder: Path, n: int, side: int) -> Path:
    """n random PNGs (side x side) in folder/images and a generic label CSV listing them."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(images / f"im{i:03d}.png")
    csv = folder / "train.csv"
    rows = [f"im{i:03d}.png,p{i}," + ",".join(str(int(i % 7 == j)) for j in range(14)) for i in range(n)]
    csv.write_text("image,patient," + ",".join(FINDINGS) + "\n" + "\n".join(rows) + "\n")
    return csv


def test_prepare_on_a_full_disk_gives_a_clear_error(tmp_path):
    csv = _png_table(tmp_path, 40, 32)
    out = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "cxrdx", "prepare", "--labels", str(csv), "--images", str(tmp_path / "images"),
         "--size", "64", "--out", str(out), "--workers", "0", "--no-progress"],
        capture_output=True, text=True, timeout=300, preexec_fn=_no_bigger_files(50_000),
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cxrdx prepare: error:") and str(out) in last and "disk full" in last, last


def test_prepare_killed_at_random_moments_finishes_without_redoing_work(tmp_path):
    """`cxrdx prepare` (2 worker processes) SIGKILLed 3 times at random moments, then rerun to the end."""
    from cxrdx.data.cache import open_cache
    from cxrdx.data.prepare import prepare_cache

    n = 150
    csv = _png_table(tmp_path, n, 512)
    images = tmp_path / "images"
    out = tmp_path / "cache"
    script = textwrap.dedent(
        """
        import sys, time
        import tqdm
        import cxrdx.data.prepare as c
        c.SAVE_EVERY_S = 0.2  # durable progress often, so a kill finds some
        # pace the parent (>= 3 s for the whole table) so a kill lands mid-way even on a fast machine
        _update = tqdm.tqdm.update
        tqdm.tqdm.update = lambda self, n=1: (time.sleep(0.02), _update(self, n))[1]
        from cxrdx.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    args = ["prepare", "--labels", str(csv), "--images", str(images), "--size", "64", "--out", str(out),
            "--workers", "2", "--no-progress"]  # fmt: skip
    pick = random.Random(int(os.environ.get("CXRDX_FAULT_SEED", "7")))
    done_counts = []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script, *args], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        before = done_counts[-1] if done_counts else 0
        while time.monotonic() < deadline and proc.poll() is None:  # until this run has made progress
            try:
                if int((np.load(out / "done.npy") == 1).sum()) > before:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        time.sleep(pick.uniform(0.1, 0.6))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        # the only tracebacks allowed: orphaned decoding workers finding their SIGKILLed parent gone
        # (their output interleaves; a traceback of the main process would show cxrdx's own frames)
        if "Traceback" in err:
            assert "SpawnPoolWorker" in err and "src/cxrdx/" not in err, err
        done = np.load(out / "done.npy")
        done_counts.append(int((done == 1).sum()))
        if proc.returncode == 0:  # this run finished before its kill: nothing is left for the rerun
            break
    assert any(0 < c < n for c in done_counts), f"no kill landed mid-way: {done_counts}"
    assert done_counts == sorted(done_counts)  # progress is never lost between kills
    result = prepare_cache([csv], out, size=64, images=images, workers=0, progress=False)
    assert result.cached == n and not result.failures
    assert result.decoded == n - done_counts[-1]  # finished images are not redone
    reference = prepare_cache([csv], tmp_path / "ref", size=64, images=images, workers=0, progress=False)
    np.testing.assert_array_equal(open_cache(out).images, open_cache(reference.out).images)
    print(f"prepare kills: {len(done_counts)}, rows done at each kill: {done_counts}")
