"""cxrdx.interop node, spool and send, in-process: no PACS needed (tests/interop/test_node_orthanc.py has one).

The node here gets a fake processor (no model) and sends to a pynetdicom Storage SCP
that the test runs, so receiving, triage, the spool, retries and AE-title checks are
checked quickly and exactly.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pydicom
import pytest
from conftest import free_port
from node_kit import echo, phantom_dicom, store, wait_for
from testkit import run_cli

from cxrdx.errors import ConfigError
from cxrdx.interop.node import Node, NodeConfig, not_processed_reason, parse_ae_titles, parse_received
from cxrdx.interop.send import Destination, parse_destination
from cxrdx.interop.spool import Spool, spool_key

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"


def part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- the spool


def test_spool_receive_results_and_recover(tmp_path):
    spool = Spool(tmp_path / "spool")
    ds = phantom_dicom(1)
    path = spool.receive(ds.SOPInstanceUID, part10(ds))
    assert spool.pending() == [path] and pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    assert not list(spool.tmp.iterdir()), "no temporary file is left after a write"

    out = spool.put_results(path, [b"sr-bytes", b"sc-bytes"])
    assert not path.exists() and spool.pending() == []
    assert spool.outgoing() == [out] and [p.read_bytes() for p in spool.result_files(out)] == [
        b"sr-bytes",
        b"sc-bytes",
    ]

    # A crash after the results were written but before the source was removed, plus half a write:
    again = spool.receive(ds.SOPInstanceUID, part10(ds))
    (spool.tmp / "half.part").write_bytes(b"x")
    left = Spool(tmp_path / "spool").recover()
    assert not again.exists(), "a source whose results are in the outbox is done"
    assert not list(spool.tmp.iterdir())
    assert left == {"inbox": 0, "outbox": 1, "failed": 0, "undeliverable": 0}

    spool.sent(out)
    assert spool.outgoing() == []


def test_spool_fail_keeps_reason_and_order(tmp_path):
    spool = Spool(tmp_path)
    paths = []
    for i in range(3):
        ds = phantom_dicom(i)
        paths.append(spool.receive(ds.SOPInstanceUID, part10(ds)))
        time.sleep(0.01)
    assert spool.pending() == paths, "oldest first"
    dest = spool.fail(paths[1], "cannot decode the pixel data")
    assert dest.with_suffix(".txt").read_text().startswith("cannot decode")
    assert spool.counts()["failed"] == 1 and spool.pending() == [paths[0], paths[2]]


def test_spool_key_is_a_safe_file_name():
    assert spool_key("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    for bad in ("../../etc/passwd", "1.2/3", "", "1..2"):
        key = spool_key(bad)
        assert "/" not in key and ".." not in key and key.startswith("x")


def test_spool_that_cannot_be_written_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="--spool"):
        Spool(blocker / "spool")


# --------------------------------------------------------------------------- parsing and triage


def test_parse_destination_and_ae_titles():
    assert parse_destination("ORTHANC@127.0.0.1:4242") == Destination("ORTHANC", "127.0.0.1", 4242)
    assert parse_destination("PACS@[::1]:104").host == "::1"
    for bad in ("ORTHANC", "ORTHANC@host", "@h:1", "A@h:0", "A@h:70000", "WAYTOOLONGAETITLE17@h:1"):
        with pytest.raises(ConfigError, match="AET@HOST:PORT"):
            parse_destination(bad)
    assert parse_ae_titles("ORTHANC, MODALITY1") == ["ORTHANC", "MODALITY1"]
    assert parse_ae_titles(None) is None
    with pytest.raises(ConfigError):
        parse_ae_titles(" , ")


def test_received_data_sets_are_checked():
    ds, problem = parse_received(part10(phantom_dicom(0)))
    assert problem is None and ds.Rows == 64
    good = part10(phantom_dicom(0))
    _, problem = parse_received(good[: len(good) - 1000])
    assert "truncated" in problem or "malformed" in problem
    _, problem = parse_received(good[:300] + b"\xff" * 200)
    assert problem
    _, problem = parse_received(b"not dicom at all")
    assert "malformed" in problem
    no_pixels = phantom_dicom(0)
    del no_pixels.PixelData
    assert parse_received(part10(no_pixels))[1] == "no pixel data"


def test_not_processed_reasons():
    assert not_processed_reason(phantom_dicom(0), allow_lateral=False) is None
    assert "lateral" in not_processed_reason(phantom_dicom(0, view="LL"), allow_lateral=False)
    assert not_processed_reason(phantom_dicom(0, view="LL"), allow_lateral=True) is None
    assert "KNEE" in not_processed_reason(phantom_dicom(0, BodyPartExamined="KNEE"), allow_lateral=False)
    # Radiographs shipped as Secondary Capture (SIIM-ACR) are read; other SCs and our own pictures are not.
    assert not_processed_reason(phantom_dicom(0, modality="CR", sop_class=SC), allow_lateral=False) is None
    assert "modality OT" in not_processed_reason(
        phantom_dicom(0, modality="OT", sop_class=SC), allow_lateral=False
    )
    ours = phantom_dicom(0, modality="DX", sop_class=SC, Manufacturer="cxrdx", BurnedInAnnotation="YES")
    assert "burned-in" in not_processed_reason(ours, allow_lateral=False)


# --------------------------------------------------------------------------- the node, in-process


class Destination_SCP:
    """A pynetdicom Storage SCP standing in for the PACS; can start late or refuse."""

    def __init__(self, port: int, refuse: bool = False) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list = []
        self.refuse = refuse
        ae = AE(ae_title="PACS")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        if self.refuse:
            return 0xA700
        self.received.append(event.dataset)
        return 0

    def stop(self) -> None:
        self.server.shutdown()


def result_uid(uid: str) -> str:
    return pydicom.uid.generate_uid(entropy_srcs=[str(uid), "result"])


def fake_results(paths):
    """A processor without a model: one 'result' per source, a copy of it with a derived UID."""
    for path in paths:
        ds = pydicom.dcmread(path)
        if ds.get("PatientID") == "UNREADABLE":
            yield path, "cannot decode the pixel data"
            continue
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = result_uid(ds.SOPInstanceUID)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # SC
        yield path, [part10(ds)]


@pytest.fixture
def node_factory(tmp_path):
    nodes = []

    def make(dest_port: int, **kw) -> Node:
        config = NodeConfig(
            port=free_port(),
            destination=Destination("PACS", "127.0.0.1", dest_port),
            spool=tmp_path / "spool",
            backoff=(0.05, 0.2),
            **kw,
        )
        node = Node(config, fake_results)
        node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


def test_node_echo_store_triage_and_send(node_factory):
    pacs_port = free_port()
    pacs = Destination_SCP(pacs_port)
    try:
        node = node_factory(pacs_port)
        port = node.address[1]
        assert echo(port)
        assert not echo(port, ae_title="SOMEONE_ELSE"), "the called AE title must be ours"
        good = [phantom_dicom(i) for i in range(3)]
        lateral = phantom_dicom(10, view="RL")
        knee = phantom_dicom(11, BodyPartExamined="KNEE")
        ct = phantom_dicom(12, modality="CT", sop_class=CT_IMAGE)
        unreadable = phantom_dicom(13, PatientID="UNREADABLE")
        statuses = store(port, [*good, lateral, knee, ct, unreadable], "CXRDX")
        assert statuses == [0] * 7, "everything is acknowledged"
        wait_for(lambda: len(pacs.received) == 3 and node.idle(), 20, "3 results at the PACS")
        got = sorted(ds.SOPInstanceUID for ds in pacs.received)
        assert got == sorted(result_uid(ds.SOPInstanceUID) for ds in good)
        assert node.counts == {"received": 4, "ignored": 3, "refused": 0, "processed": 3, "failed": 1}
        assert node.spool.counts()["failed"] == 1
    finally:
        pacs.stop()


def test_node_retries_until_the_destination_comes_up(node_factory):
    pacs_port = free_port()
    node = node_factory(pacs_port)
    ds = phantom_dicom(0)
    assert store(node.address[1], [ds], "CXRDX") == [0]
    wait_for(lambda: node.counts["processed"] == 1, 20, "processing")
    time.sleep(0.5)  # a few failed tries with backoff
    assert node.spool.counts()["outbox"] == 1, "unsent results wait in the spool"
    pacs = Destination_SCP(pacs_port)
    try:
        wait_for(lambda: len(pacs.received) == 1 and node.idle(), 20, "the retry")
    finally:
        pacs.stop()


def test_node_parks_results_the_destination_keeps_refusing(node_factory):
    pacs_port = free_port()
    pacs = Destination_SCP(pacs_port, refuse=True)
    try:
        node = node_factory(pacs_port)
        store(node.address[1], [phantom_dicom(0)], "CXRDX")
        wait_for(lambda: node.spool.counts()["undeliverable"] == 1, 30, "the results to be parked")
        parked = next(node.spool.undeliverable.iterdir())
        assert "0xA700" in (parked / "reason.txt").read_text()
    finally:
        pacs.stop()


def test_node_allowed_calling_ae_titles(node_factory):
    node = node_factory(free_port(), allow_calling=["ORTHANC"])
    port = node.address[1]
    assert echo(port, calling="ORTHANC")
    assert not echo(port, calling="INTRUDER")
    assert store(port, [phantom_dicom(0)], "CXRDX", calling="INTRUDER") == [None]
    assert node.spool.pending() == [] and node.counts["received"] == 0


def test_node_refuses_when_the_spool_cannot_be_written(node_factory, monkeypatch):
    node = node_factory(free_port())

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(node.spool, "receive", disk_full)
    assert store(node.address[1], [phantom_dicom(0)], "CXRDX") == [0xA700], "the sender keeps it and retries"


def test_node_refuses_a_truncated_data_set_and_keeps_going(node_factory, tmp_path, monkeypatch):
    from pynetdicom import AE, _config

    pacs_port = free_port()
    pacs = Destination_SCP(pacs_port)
    try:
        node = node_factory(pacs_port)
        port = node.address[1]
        ds = phantom_dicom(0)
        full = part10(ds)
        cut = tmp_path / "cut.dcm"
        cut.write_bytes(full[: len(full) - 1500])
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the bytes as they are
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRDX")
        assert assoc.is_established
        status = assoc.send_c_store(cut)
        assert status.Status == 0xC000
        assoc.release()
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
        assert echo(port), "the node still answers"
        assert store(port, [phantom_dicom(1)], "CXRDX") == [0]
        wait_for(lambda: len(pacs.received) == 1, 20, "the good image's results")
        assert node.counts["refused"] == 1
    finally:
        pacs.stop()


def test_node_concurrent_associations(node_factory):
    pacs_port = free_port()
    pacs = Destination_SCP(pacs_port)
    try:
        node = node_factory(pacs_port)
        batches = [[phantom_dicom(100 * k + i) for i in range(10)] for k in range(4)]
        results: list = []
        threads = [
            threading.Thread(target=lambda b=b: results.append(store(node.address[1], b, "CXRDX")))
            for b in batches
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r == [0] * 10 for r in results)
        wait_for(lambda: len(pacs.received) == 40 and node.idle(), 30, "40 results")
        assert len({ds.SOPInstanceUID for ds in pacs.received}) == 40
    finally:
        pacs.stop()


# --------------------------------------------------------------------------- the command line


def test_listen_refuses_remote_bind_and_bad_destination(capsys, tmp_path):
    ckpt = tmp_path / "none.safetensors"
    rc, _, err = run_cli(capsys, ["listen", "--weights", ckpt, "--send-to", "P@h:1", "--host", "0.0.0.0"])
    assert rc == 2 and "--allow-remote" in err
    rc, _, err = run_cli(capsys, ["listen", "--weights", ckpt, "--send-to", "nonsense"])
    assert rc == 2 and "AET@HOST:PORT" in err
    rc, _, err = run_cli(capsys, ["listen", "--weights", ckpt, "--send-to", "P@h:1", "--allow-calling", ","])
    assert rc == 2 and "--allow-calling" in err


def test_node_needs_a_destination(tmp_path):
    with pytest.raises(ConfigError, match="--send-to"):
        Node(NodeConfig(spool=Path(tmp_path)), fake_results)
