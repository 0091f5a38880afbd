"""Shared test fixtures: the real data folder (skip when absent) and a small phantom set."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRDX_SHARED_DATA", REPO.parent / "shared" / "data"))
# A checkpoint written by train/import/calibrate is exported, but the backend choice is not measured
# (it compiles the network in every runtime: seconds per test); tests/inference/test_autotune.py turns it on.
os.environ.setdefault("CXRDX_AUTOTUNE_ON_WRITE", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real NIH images, tables, DICOMs); tests using it skip when it is absent."""
    if not (SHARED_DATA / "nih").is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is only on development machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """A small phantom dataset in the NIH layout (images/, Data_Entry.csv, BBox_List.csv)."""
    from cxrdx.phantom.dataset import write_dataset

    out = tmp_path_factory.mktemp("phantoms")
    write_dataset(out, n=120, size=64, seed=0)
    return out


def free_port() -> int:
    """A free TCP port on loopback, for the servers tests start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
