"""DICOM TLS: the node takes TLS only, from peers whose certificate the CA signed, and sends to a PACS over TLS.

Certificates are made here by the OpenSSL command line (a test CA, peers it signs, and a rogue
peer signed by another CA). The peers are real: DCMTK's ``storescu +tls`` into the node, and
Debian's Orthanc configured for DICOM TLS (``DicomTlsEnabled``, its certificate required of
callers) as the destination. Skips with the reason where Orthanc, DCMTK or openssl is missing.
"""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import free_port
from node_kit import (
    ORTHANC_BIN,
    Listener,
    Orthanc,
    copy_results,
    echo,
    phantom_dicom,
    result_uid,
    tiny_checkpoint,
    wait_for,
)
from tls_kit import make_pki

from cxrdx.errors import ConfigError
from cxrdx.interop.node import Node, NodeConfig
from cxrdx.interop.send import Destination
from cxrdx.interop.tls import TlsFiles

STORESCU = "/usr/bin/storescu" if Path("/usr/bin/storescu").exists() else None
pytestmark = pytest.mark.skipif(
    ORTHANC_BIN is None or STORESCU is None,
    reason="Orthanc and DCMTK are not installed (Debian `orthanc`, `dcmtk`; `make test` installs them)",
)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def pki(work):
    return make_pki(work / "pki")


@pytest.fixture(scope="module")
def orthanc(work, pki):
    (work / "orthanc").mkdir()
    server = Orthanc(work / "orthanc", dicom_tls=pki.pacs.files())
    yield server
    server.stop()


def storescu(port: int, path: Path, *tls: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STORESCU, *tls, "-aec", "CXRDX", "-aet", "MODALITY", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def tls_of(peer) -> list[str]:
    return ["+tls", str(peer.key), str(peer.cert), "+cf", str(peer.ca)]


def in_orthanc(orthanc: Orthanc, uid: str) -> bool:
    return bool(orthanc.find(SOPInstanceUID=uid))


@pytest.fixture
def tls_node(tmp_path, pki, orthanc):
    node = Node(
        NodeConfig(
            port=free_port(),
            destination=Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port),
            spool=tmp_path / "spool",
            backoff=(0.05, 0.5),
            request_timeout=30.0,
            tls=TlsFiles(pki.node.cert, pki.node.key, pki.ca),
        ),
        copy_results,
    )
    node.start()
    yield node
    node.stop()


def test_storescu_over_tls_in_results_to_orthanc_over_tls(tls_node, pki, orthanc, tmp_path):
    source = phantom_dicom(3100)
    path = tmp_path / "in.dcm"
    source.save_as(path, enforce_file_format=True)
    done = storescu(tls_node.address[1], path, *tls_of(pki.modality))
    assert done.returncode == 0, done.stderr
    assert tls_node.counts["received"] == 1
    wanted = result_uid(source.SOPInstanceUID)
    wait_for(lambda: in_orthanc(orthanc, wanted), 30, "the result in Orthanc, sent over DICOM TLS")


def test_peers_without_a_ca_signed_certificate_are_refused(tls_node, pki, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="cxrdx.node")
    path = tmp_path / "in.dcm"
    phantom_dicom(3101).save_as(path, enforce_file_format=True)
    port = tls_node.address[1]
    rogue = storescu(port, path, *tls_of(pki.rogue))  # a certificate from another CA
    plain = storescu(port, path)  # no TLS at all
    assert rogue.returncode != 0 and plain.returncode != 0
    assert not echo(port), "a plain association is not taken"
    assert tls_node.counts["received"] == 0
    wait_for(lambda: "TLS handshake failed" in caplog.text, 10, "the refused handshakes in the log")
    assert "certificate" in caplog.text.lower()
    assert echo(port, tls_args=pki.modality.client_args()), "a peer with a CA-signed certificate still is"


def test_a_silent_connection_does_not_hold_up_other_handshakes(tls_node, pki):
    """pynetdicom does the TLS handshake in its accept loop; the node moves it to the connection's thread."""
    with socket.create_connection(tls_node.address, timeout=30):  # connects, sends nothing
        assert echo(tls_node.address[1], tls_args=pki.modality.client_args())


def test_a_destination_whose_certificate_the_ca_did_not_sign_gets_nothing(tmp_path, pki, caplog):
    caplog.set_level(logging.WARNING, logger="cxrdx.node")
    (tmp_path / "rogue-pacs").mkdir()
    rogue_pacs = Orthanc(tmp_path / "rogue-pacs", dicom_tls=pki.rogue.files())
    node = Node(
        NodeConfig(
            port=free_port(),
            destination=Destination("ORTHANC", "127.0.0.1", rogue_pacs.dicom_port),
            spool=tmp_path / "spool",
            backoff=(0.05, 0.5),
            tls=TlsFiles(pki.node.cert, pki.node.key, pki.ca),
        ),
        copy_results,
    )
    node.start()
    try:
        path = tmp_path / "in.dcm"
        phantom_dicom(3102).save_as(path, enforce_file_format=True)
        assert storescu(node.address[1], path, *tls_of(pki.modality)).returncode == 0
        wait_for(lambda: "destination unavailable" in caplog.text, 20, "the sender's failed TLS association")
        assert node.spool.counts()["outbox"] == 1, "the results wait in the spool"
        assert rogue_pacs.get("/instances") == []
    finally:
        node.stop()
        rogue_pacs.stop()


def test_tls_options_go_together_and_are_checked(pki, tmp_path):
    with pytest.raises(ConfigError, match="--tls-ca"):
        TlsFiles.from_options(str(pki.node.cert), str(pki.node.key), None)
    with pytest.raises(ConfigError, match="cannot be used together"):
        TlsFiles.from_options(str(pki.node.cert), str(pki.modality.key), str(pki.ca))
    with pytest.raises(ConfigError, match="no such file"):
        TlsFiles.from_options(str(tmp_path / "none.pem"), str(pki.node.key), str(pki.ca))
    assert TlsFiles.from_options(None, None, None) is None


def test_cxrdx_listen_over_tls(work, pki, orthanc):
    """The command line, as a site runs it: storescu +tls -> `cxrdx listen --tls-*` -> Orthanc over DICOM TLS."""
    ckpt = tiny_checkpoint(work / "tiny.safetensors")
    node = Listener(
        ckpt,
        orthanc.destination,
        work / "spool",
        None,
        *pki.node.options(),
        tls_args=pki.modality.client_args(),
    )
    try:
        source = phantom_dicom(3103)
        path = work / "listen-in.dcm"
        source.save_as(path, enforce_file_format=True)
        done = storescu(node.port, path, *tls_of(pki.modality))
        assert done.returncode == 0, done.stderr
        study = str(source.StudyInstanceUID)
        wait_for(
            lambda: orthanc.find(StudyInstanceUID=study, Modality="SR"), 90, "the SR in Orthanc over TLS"
        )
        assert "(DICOM TLS)" in node.text()
    finally:
        node.stop()


def test_predict_format_dicom_sends_over_dicom_tls(work, pki, orthanc, capsys):
    from testkit import run_cli

    ckpt = tiny_checkpoint(work / "tiny-predict.safetensors")
    source = phantom_dicom(3104)
    source.save_as(work / "film.dcm", enforce_file_format=True)
    argv = ["predict", "--weights", ckpt, work / "film.dcm", "--format", "dicom", "--out", work / "out"]
    rc, _, err = run_cli(capsys, [*argv, "--send-to", orthanc.destination, *pki.node.options()])
    assert rc == 0, err
    assert "by C-STORE over TLS" in err
    assert orthanc.find(StudyInstanceUID=str(source.StudyInstanceUID), Modality="SR")
