"""The node under hostile peers and failing disks (issue 28 items 3, 4, 2's size cap and 9).

Everything talks to 127.0.0.1 (an attacker is played from 127.0.0.2, also loopback), bounded
in count and time. Disk failures are injected at the filesystem call, which works as root.
"""

from __future__ import annotations

import errno
import logging
import shutil
import socket
import threading
import time

import pydicom
import pytest
from conftest import free_port
from node_kit import echo, phantom_dicom, store, wait_for
from test_node import Destination_SCP, fake_results, part10
from testkit import run_cli

from cxrdx.interop import spool as spool_module
from cxrdx.interop.guard import shown
from cxrdx.interop.node import Node, NodeConfig, parse_received
from cxrdx.interop.send import Destination


@pytest.fixture
def make_node(tmp_path):
    nodes = []

    def make(dest_port: int | None = None, processor=fake_results, **kw) -> Node:
        config = NodeConfig(
            port=free_port(),
            destination=Destination("PACS", "127.0.0.1", dest_port or free_port()),
            spool=tmp_path / "spool",
            backoff=(0.05, 0.2),
            **kw,
        )
        node = Node(config, processor)
        node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def pacs():
    scp = Destination_SCP(free_port())
    scp.port = scp.server.server_address[1]
    yield scp
    scp.stop()


def messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "cxrdx.node")


def idle_sockets(port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


# --------------------------------------------------------------------------- item 3: the spool


def test_delivered_results_the_spool_cannot_drop_are_not_resent(make_node, pacs, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="cxrdx.node")
    read_only = threading.Event()
    read_only.set()
    real_rmtree = shutil.rmtree

    def rmtree(path, ignore_errors=False, **kw):  # a read-only filesystem: the delete fails
        if read_only.is_set() and "outbox" in str(path):
            if ignore_errors:
                return
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_rmtree(path, ignore_errors=ignore_errors, **kw)

    monkeypatch.setattr(spool_module.shutil, "rmtree", rmtree)
    node = make_node(pacs.port)
    good = [phantom_dicom(i) for i in range(3)]
    assert store(node.address[1], good, "CXRDX") == [0, 0, 0]
    wait_for(lambda: len(node.sender.unremoved) == 3, 20, "3 delivered, unremovable result folders")
    time.sleep(1.5)  # the old sender re-sent them every backoff (0.05 to 0.2 s) here
    assert len(pacs.received) == 3, "each result is sent once"
    assert store(node.address[1], [phantom_dicom(10)], "CXRDX") == [0xA700], "the spool cannot take results"
    assert "delivered but cannot be removed from the spool (Read-only file system)" in messages(caplog)
    read_only.clear()  # the disk is writable again: the folders go, new images are accepted
    wait_for(lambda: node.spool.counts()["outbox"] == 0 and not node.sender.unremoved, 20, "the removal")
    assert store(node.address[1], [phantom_dicom(11)], "CXRDX") == [0]
    wait_for(lambda: len(pacs.received) == 4, 20, "the next result")


def test_a_full_spool_holds_the_results_and_refuses_new_images(make_node, pacs, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="cxrdx.node")
    inferences: list[str] = []

    def counting(paths):
        for path in paths:
            inferences.append(path.stem)
        yield from fake_results(paths)

    full = threading.Event()
    full.set()
    node = make_node(pacs.port, processor=counting)
    real_put = node.spool.put_results

    def put_results(source, results):
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(source, results)

    monkeypatch.setattr(node.spool, "put_results", put_results)
    first = phantom_dicom(0)
    assert store(node.address[1], [first], "CXRDX") == [0]
    wait_for(lambda: node.spool_trouble() is not None, 20, "the failed write")
    assert store(node.address[1], [phantom_dicom(1)], "CXRDX") == [0xA700], "refused while the disk is full"
    knee = phantom_dicom(3, BodyPartExamined="KNEE")
    assert store(node.address[1], [knee], "CXRDX") == [0], "what the node does not read is still acknowledged"
    time.sleep(1.0)  # several write retries (backoff 0.05 to 0.2 s)
    assert inferences == [first.SOPInstanceUID], "the image was read once; only the write is retried"
    assert "the spool cannot take its results (No space left on device)" in messages(caplog)
    full.clear()
    wait_for(lambda: len(pacs.received) == 1 and node.idle(), 20, "the held results, sent")
    assert inferences == [first.SOPInstanceUID]
    assert store(node.address[1], [phantom_dicom(2)], "CXRDX") == [0]


def test_spool_sent_checks_the_folder_is_gone(tmp_path, monkeypatch):
    spool = spool_module.Spool(tmp_path)
    ds = phantom_dicom(0)
    out = spool.put_results(spool.receive(ds.SOPInstanceUID, part10(ds)), [b"x"])
    monkeypatch.setattr(spool_module.shutil, "rmtree", lambda *a, **k: None)  # deletes nothing
    with pytest.raises(OSError, match="still in the spool"):
        spool.sent(out)
    monkeypatch.undo()
    spool.sent(out)
    assert not out.exists()
    spool.sent(out)  # already gone: fine


# --------------------------------------------------------------------------- item 4: idle sockets


def test_idle_connections_are_closed_quickly_and_said_so(make_node, caplog):
    caplog.set_level(logging.INFO, logger="cxrdx.node")
    node = make_node(request_timeout=1.0, max_per_peer=4)
    port = node.address[1]
    idle = idle_sockets(port, 4)
    try:
        assert all(closed_by_peer(s, 10) for s in idle), "each idle connection is closed after 1 s"
        assert echo(port)
    finally:
        for s in idle:
            s.close()
    log = messages(caplog)
    assert "no association request within 1 s (an idle connection)" in log
    assert "calling AE title not allowed" not in log


def test_one_peer_cannot_take_every_slot(make_node, caplog):
    """The issue's attack: 16 idle sockets; here from 127.0.0.2 while a modality at 127.0.0.1 echoes."""
    caplog.set_level(logging.INFO, logger="cxrdx.node")
    node = make_node(request_timeout=30.0, max_per_peer=4)
    port = node.address[1]
    idle = idle_sockets(port, 16, source="127.0.0.2")
    try:
        ok = sum(echo(port) for _ in range(10))
        assert ok == 10, f"{ok} of 10 echoes answered"
        assert node.guard.refused == 12, "16 - 4 connections were closed at once"
        assert sum(closed_by_peer(s, 0.5) for s in idle) == 12
    finally:
        for s in idle:
            s.close()
    log = messages(caplog)
    assert "connection from 127.0.0.2 closed at once: it already holds 4 connection(s), the limit per" in log
    assert log.count("closed at once") == 1, "12 refusals, one log line (a flood does not flood the log)"


def test_non_dicom_traffic_is_logged(make_node, caplog):
    caplog.set_level(logging.INFO, logger="cxrdx.node")
    node = make_node()
    port = node.address[1]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        try:
            while s.recv(1024):
                pass
        except OSError:
            pass
    wait_for(lambda: "not DICOM traffic" in messages(caplog), 10, "the log line")
    assert echo(port)


def test_a_rejection_says_why(make_node, caplog):
    caplog.set_level(logging.INFO, logger="cxrdx.node")
    node = make_node(allow_calling=["ORTHANC"])
    assert not echo(node.address[1], calling="INTRUDER")
    assert not echo(node.address[1], ae_title="OTHER", calling="ORTHANC")
    wanted = (
        "rejected: calling AE title not allowed (--allow-calling)",
        "rejected: called AE title 'OTHER' is not this node's (CXRDX)",
    )
    # the node logs from its own thread: the line may land just after the peer has its answer
    wait_for(lambda: all(w in messages(caplog) for w in wanted), 10, "both rejections in the log")


# --------------------------------------------------------------------------- item 2: one instance's size


def test_an_instance_over_the_size_cap_ends_its_association(make_node, pacs, caplog):
    caplog.set_level(logging.INFO, logger="cxrdx.node")
    node = make_node(pacs.port, max_instance_mb=0.1)  # 100 KiB
    big = phantom_dicom(0, size=512)  # 256 KiB of pixels
    assert store(node.address[1], [big], "CXRDX") == [None], "no answer: the association was aborted"
    assert "aborted: it sent more than 0.1 MB for one object" in messages(caplog)
    assert node.spool.counts()["inbox"] == 0 and node.counts["received"] == 0
    assert store(node.address[1], [phantom_dicom(1)], "CXRDX") == [0], "a normal image still goes in"
    wait_for(lambda: len(pacs.received) == 1, 20, "its results")


# --------------------------------------------------------------------------- item 9


def test_undecodable_pixel_data_is_refused_not_acknowledged(make_node):
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    ds = phantom_dicom(0)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 200])
    ds["PixelData"].VR = "OB"
    _, problem = parse_received(part10(ds))
    assert problem.startswith("cannot decode: unsupported transfer syntax MPEG2"), problem
    node = make_node()
    assert store(node.address[1], [ds], "CXRDX") == [0xC000]
    assert node.spool.counts()["inbox"] == 0


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_peer_values_are_escaped_in_the_log(make_node, caplog):
    caplog.set_level(logging.DEBUG, logger="cxrdx.node")
    node = make_node()
    forged = "1.2.3\n2026-01-01 00:00:00 cxrdx listen: INFO all good"
    ds = phantom_dicom(0, view="LL", BodyPartExamined="KNEE\x1b[2J")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = forged
    assert store(node.address[1], [ds], "CXRDX") == [0]
    lines = [r.getMessage() for r in caplog.records if r.name == "cxrdx.node"]
    line = next(m for m in lines if "not processed" in m)
    assert "\n" not in line and "\x1b" not in line, line
    assert "1.2.3\\n2026-01-01" in line and "KNEE\\x1b[2J" in line
    assert shown("a\rb\tc\x00") == "a\\rb\\tc\\x00" and shown("x" * 500).endswith("...")


def test_pixel_data_corrupt_only_when_decoded_goes_to_failed(make_node, pacs):
    """The decision the README states: what the header cannot show is acknowledged, then kept in failed/."""
    node = make_node(pacs.port)
    assert store(node.address[1], [phantom_dicom(0, PatientID="UNREADABLE")], "CXRDX") == [0]
    wait_for(lambda: node.spool.counts()["failed"] == 1, 20, "the failed image")
    reason = next(node.spool.failed.glob("*.txt")).read_text()
    assert "cannot decode" in reason
    assert pydicom.dcmread(next(node.spool.failed.glob("*.dcm"))).PatientID == "UNREADABLE"


def test_the_spool_ignores_symbolic_links(tmp_path):
    spool = spool_module.Spool(tmp_path / "spool")
    secret = tmp_path / "secret.dcm"
    secret.write_bytes(part10(phantom_dicom(0)))
    (spool.inbox / "1.2.3.dcm").symlink_to(secret)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "000.dcm").symlink_to(secret)
    (spool.outbox / "00000000000000000001-1.2.3").symlink_to(tmp_path / "elsewhere")
    real = spool.outbox / "00000000000000000002-1.2.4"
    real.mkdir()
    (real / "000.dcm").symlink_to(secret)
    assert spool.pending() == [] and spool.outgoing() == [real] and spool.result_files(real) == []


def test_listen_checks_the_new_limits(capsys, tmp_path):
    base = ["listen", "--weights", tmp_path / "none.safetensors", "--send-to", "P@h:1"]
    rc, _, err = run_cli(capsys, [*base, "--max-per-peer", "0"])
    assert rc == 2 and "--max-per-peer must be at least 1" in err
    rc, _, err = run_cli(capsys, [*base, "--max-instance-mb", "0"])
    assert rc == 2 and "--max-instance-mb must be more than 0" in err
