"""`make demo` (scripts/demo.sh) trains a fixed number of epochs, time only a cap, and says when the cap (or
early stopping) cut training short. Run against a stand-in `cxrdx` that records its arguments."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$1" = train ]; then
  while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
  mkdir -p "$out"
  printf '[\\n  {\\n    "epoch": 1\\n  },\\n  {\\n    "epoch": %s\\n  }\\n]\\n' "$EPOCHS_DONE" > "$out/history.json"
fi
"""


def _demo(tmp_path: Path, epochs_done: int, **env: str) -> tuple[str, list[str]]:
    (tmp_path / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    fake = tmp_path / ".venv" / "bin" / "cxrdx"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    calls = tmp_path / f"calls{epochs_done}.txt"
    environ = {**os.environ, "CALLS": str(calls), "EPOCHS_DONE": str(epochs_done), **env}
    for key in ("DEMO_EPOCHS", "DEMO_MAX_MINUTES"):
        if key not in env:
            environ.pop(key, None)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), str(tmp_path / "demo")],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, calls.read_text().splitlines()


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs bash")
def test_demo_trains_a_fixed_number_of_epochs_and_warns_when_cut_short(tmp_path):
    out, calls = _demo(tmp_path, 12)
    train = next(c.split() for c in calls if c.startswith("train "))
    assert train[train.index("--epochs") + 1] == "12"  # the README's figure is for 12 epochs
    assert float(train[train.index("--max-minutes") + 1]) >= 30  # time only as a generous cap
    assert "WARNING" not in out
    out, _ = _demo(tmp_path, 7)  # the cap stopped it after 7 epochs
    assert "WARNING: training stopped after 7 of 12 epochs" in out
    out, calls = _demo(tmp_path, 20, DEMO_EPOCHS="20", DEMO_MAX_MINUTES="60")
    train = next(c.split() for c in calls if c.startswith("train "))
    assert train[train.index("--epochs") + 1] == "20" and train[train.index("--max-minutes") + 1] == "60"
    assert "WARNING" not in out
