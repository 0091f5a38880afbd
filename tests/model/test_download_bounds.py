"""Hostile and failing weight servers (issue 28 items 5 and 6): bounded transfers, no trust from a mirror.

Every server is the loopback ``Server`` of test_pretrained.py; nothing reaches the internet.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch
from test_pretrained import Server, chexnet_file

from cxrdx.cli import main
from cxrdx.errors import CheckpointError
from cxrdx.model import download, pretrained

FILE = "model.pth.tar"  # chexnet's file name


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A loopback mirror with no trust opt-in (test_pretrained's ``server`` sets it)."""
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CXRDX_OFFLINE", raising=False)
    monkeypatch.delenv("CXRDX_TRUST_UNVERIFIED_MIRROR", raising=False)
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    srv = Server()
    monkeypatch.setenv("CXRDX_WEIGHTS_MIRROR", srv.url)
    yield srv
    srv.stop()


def leftovers() -> list[str]:
    cache = pretrained.download_path("chexnet").parent
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(FILE)) if cache.is_dir() else []


# --------------------------------------------------------------------------- item 6: bounds


def test_an_endless_body_is_cut_at_the_limit_and_removed(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_TRUST_UNVERIFIED_MIRROR", "1")
    monkeypatch.setattr(download, "MAX_BYTES", 1 << 20)
    mirror.files[FILE] = chexnet_file(tmp_path)
    mirror.mode[FILE] = "endless"
    with pytest.raises(CheckpointError, match="body goes past the 1 MB"):
        pretrained.pull("chexnet", progress=False)
    assert leftovers() == [], "the oversized part is removed"
    assert len(mirror.requests) == 1, "a refusal is not retried"


def test_an_announced_10_gb_is_refused_before_any_byte(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_TRUST_UNVERIFIED_MIRROR", "1")
    mirror.files[FILE] = chexnet_file(tmp_path)
    mirror.mode[FILE] = "huge"
    with pytest.raises(CheckpointError, match=f"announces {10 << 30} bytes, more than the 256 MB"):
        pretrained.pull("chexnet", progress=False)
    assert leftovers() == [] and len(mirror.requests) == 1


def test_the_registry_size_is_enforced(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_TRUST_UNVERIFIED_MIRROR", "1")
    body = chexnet_file(tmp_path)
    mirror.files[FILE] = body + b"\0" * 100  # 100 bytes more than the published file
    entry = dict(pretrained.registry()["chexnet"], size=len(body))
    monkeypatch.setitem(pretrained.registry(), "chexnet", entry)
    with pytest.raises(CheckpointError, match=f"more than the published file's {len(body)} bytes"):
        pretrained.pull("chexnet", progress=False)
    assert leftovers() == []
    mirror.files[FILE] = body[:-100]
    with pytest.raises(CheckpointError, match=f"not the {len(body)} of the published file"):
        pretrained.pull("chexnet", progress=False)
    mirror.files[FILE] = body
    assert pretrained.pull("chexnet", progress=False).is_file()


def test_a_trickle_is_a_stall_and_the_part_is_reported(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_TRUST_UNVERIFIED_MIRROR", "1")
    monkeypatch.setenv("CXRDX_DOWNLOAD_TIMEOUT", "0.5")  # the stall window (and the socket timeout)
    monkeypatch.setattr(download, "RETRIES", 0)
    mirror.files[FILE] = chexnet_file(tmp_path)
    mirror.mode[FILE] = "trickle"  # one byte every 0.1 s: never 0.5 s without a byte
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="stalled") as info:
        pretrained.pull("chexnet", progress=False)
    assert time.monotonic() - start < 5.5, "the trickle would last 6 s; the stall ends it first"
    message = str(info.value)
    assert "partial file" in message and "resumes" in message, message
    assert leftovers() == [f"{FILE}.part"]


def test_the_overall_deadline(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_TRUST_UNVERIFIED_MIRROR", "1")
    monkeypatch.setenv("CXRDX_DOWNLOAD_DEADLINE", "0.8")
    monkeypatch.setattr(
        download, "STALL_BYTES", 1
    )  # a byte per window is progress: only the deadline ends it
    mirror.files[FILE] = chexnet_file(tmp_path)
    mirror.mode[FILE] = "trickle"
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="deadline"):
        pretrained.pull("chexnet", progress=False)
    assert time.monotonic() - start < 5.5
    assert leftovers() == [] and len(mirror.requests) == 1


def test_a_name_that_does_not_resolve_fails_at_once(tmp_path, monkeypatch, capsys):
    """Issue 26 item 4: no retries on a DNS failure, and the message points at `make demo`."""
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CXRDX_WEIGHTS_MIRROR", raising=False)
    monkeypatch.delenv("CXRDX_OFFLINE", raising=False)
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    calls = []

    def no_dns(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert main(["weights", "pull", "xrv-all"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot resolve the host name github.com" in err and "make demo" in err
    assert calls == ["github.com"], "one try, not four"


# --------------------------------------------------------------------------- item 5: trust


def test_an_unpinned_file_from_a_mirror_needs_the_opt_in(mirror, tmp_path, monkeypatch, capsys):
    mirror.files[FILE] = chexnet_file(tmp_path)
    with pytest.raises(CheckpointError, match="CXRDX_TRUST_UNVERIFIED_MIRROR=1") as info:
        pretrained.pull("chexnet", progress=False)
    assert "pins no SHA-256" in str(info.value) and "trusted from then on" in str(info.value)
    assert mirror.requests == [], "nothing was fetched"
    assert main(["weights", "pull", "chexnet", "--trust-unverified-mirror"]) == 0
    record = json.loads((pretrained.download_path("chexnet").parent / "hashes.json").read_text())[FILE]
    assert record["url"].startswith(mirror.url) and "unverified mirror" in record["trusted"]
    # Now recorded, the same mirror is checked against that hash and needs no opt-in.
    pretrained.remove("chexnet")
    assert pretrained.pull("chexnet", progress=False).is_file()
    # A pinned entry (imagenet: the publisher's prefix in the name) never needs it.
    assert pretrained.unverified_mirror("imagenet", [mirror.url + "/x"]) is None
    assert pretrained.unverified_mirror("chexnet", pretrained.registry()["chexnet"]["urls"]) is None


def test_a_first_use_hash_is_recorded_only_after_the_import(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_TRUST_UNVERIFIED_MIRROR", "1")
    junk = tmp_path / "junk.pt"
    torch.save({"not": torch.zeros(3)}, junk)  # a PyTorch file, but not CheXNet's weights
    mirror.files[FILE] = junk.read_bytes()
    with pytest.raises(CheckpointError):
        pretrained.pull("chexnet", progress=False)
    assert FILE not in pretrained.recorded_hashes(), "a file that did not import is not trusted"
    assert leftovers() == []
    mirror.files[FILE] = chexnet_file(tmp_path)  # the genuine file is not blocked by the junk's hash
    assert pretrained.pull("chexnet", progress=False).is_file()
    assert FILE in pretrained.recorded_hashes()
