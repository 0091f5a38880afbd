"""DICOMweb: the node's results by STOW-RS, into a real Orthanc with its DICOMweb plugin (Debian `orthanc-dicomweb`).

Credentials never on the command line (a URL with user:password@ is refused), read from a file
(read again after a 401: a rotated password is picked up) or the environment; a bearer token
checked by a small STOW-RS stand-in that parses the multipart body the way PS3.18 defines it.
Nothing acknowledged is lost: an endpoint that is down, then back; ``kill -9`` of ``cxrdx listen``
while it is down, a restart, the endpoint back. Skips with the reason where Orthanc or the
plugin is missing.
"""

from __future__ import annotations

import email.parser
import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from conftest import free_port
from node_kit import (
    Listener,
    Orthanc,
    copy_results,
    phantom_dicom,
    result_uid,
    store,
    tiny_checkpoint,
    wait_for,
)
from testkit import run_cli

from cxrdx.errors import ConfigError
from cxrdx.interop.destination import DestinationUnavailable, WebDestination, parse_destination
from cxrdx.interop.dicomweb import StowRs, read_credentials, refusal
from cxrdx.interop.node import Node, NodeConfig

USERS = {"cxrdx": "s3cret-pass"}


def credentials_file(path: Path, user: str, password: str) -> Path:
    path.write_text(f"# DICOMweb account\nCXRDX_DICOMWEB_USER={user}\nCXRDX_DICOMWEB_PASSWORD='{password}'\n")
    path.chmod(0o600)
    return path


def web_node(tmp_path: Path, url: str, **kw) -> Node:
    node = Node(
        NodeConfig(
            port=free_port(),
            destination=WebDestination(url),
            spool=tmp_path / "spool",
            backoff=(0.05, 0.5),
            **kw,
        ),
        copy_results,
    )
    node.start()
    return node


# --------------------------------------------------------------------------- settings


def test_send_to_url_forms_and_credentials_never_in_it():
    assert parse_destination("https://pacs.example.org/dicom-web/") == WebDestination(
        "https://pacs.example.org/dicom-web"
    )
    assert parse_destination("http://127.0.0.1:8042/dicom-web").host == "127.0.0.1"
    for bad in ("https://user:pw@pacs/dicom-web", "https://user@pacs/dicom-web", "http://u:p@[::1]:80/x"):
        with pytest.raises(ConfigError, match="credentials") as err:
            parse_destination(bad)
        assert "pw" not in str(err.value).replace("password", "")
    for bad in (
        "https://pacs:99999/x",
        "https:///x",
        "ftp://pacs/x",
    ):
        with pytest.raises(ConfigError):
            parse_destination(bad)
    with pytest.raises(ConfigError, match="no query") as err:
        parse_destination("https://pacs/dicom-web?access_token=abc")
    assert "abc" not in str(err.value), "a query may hold a secret: not shown"


def test_credentials_from_a_file_or_the_environment(tmp_path):
    token = tmp_path / "token.env"
    token.write_text("export CXRDX_DICOMWEB_TOKEN=abc.def-ghi\n")
    creds = read_credentials(token)
    assert creds.token == "abc.def-ghi" and creds.kind == "a bearer token"
    assert "abc" not in repr(creds), "a value never reaches a log line"
    basic = read_credentials(credentials_file(tmp_path / "basic.env", "alice", "p w"))
    assert (basic.user, basic.password) == ("alice", "p w")
    env = {"CXRDX_DICOMWEB_USER": "bob", "CXRDX_DICOMWEB_PASSWORD": "x"}
    assert read_credentials(None, env).user == "bob"
    assert read_credentials(None, {}) is None
    for text, match in (
        ("CXRDX_DICOMWEB_TOKEN=a\nCXRDX_DICOMWEB_USER=b\nCXRDX_DICOMWEB_PASSWORD=c\n", "not both"),
        ("CXRDX_DICOMWEB_USER=b\n", "go together"),
        ("Bearer abc\n", "line 1"),
        ("TOKEN=abc\n", "line 1"),
        ("# nothing\n", "no CXRDX_DICOMWEB_TOKEN"),
    ):
        bad = tmp_path / "bad.env"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match):
            read_credentials(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_credentials(tmp_path / "missing.env")


def test_stow_rs_response_outcomes():
    ok = pydicom.Dataset()
    ok.ReferencedSOPSequence = [pydicom.Dataset()]
    ok.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    objects = [("1.2.840.10008.5.1.4.1.1.7", "1.2.3", "1.2.840.10008.1.2.1")]
    assert refusal(ok, objects, "D") is None
    assert refusal(pydicom.Dataset(), objects, "D") is None  # a success with no body
    assert "1.2.4" in refusal(ok, [*objects, ("x", "1.2.4", "y")], "D")
    bad = pydicom.Dataset()
    bad.FailedSOPSequence = [pydicom.Dataset()]
    bad.FailedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    bad.FailedSOPSequence[0].FailureReason = 0xA700
    assert "0xA700" in refusal(bad, objects, "D")


@pytest.fixture
def node_log_restored():
    """`cxrdx listen`'s CLI sets up the node's logger on the (captured) stderr: put it back afterwards."""
    node_log = logging.getLogger("cxrdx.node")
    handlers, propagate, level = list(node_log.handlers), node_log.propagate, node_log.level
    yield
    node_log.handlers[:] = handlers
    node_log.propagate, node_log.level = propagate, level


def test_listen_refuses_credentials_in_the_url(capsys, tmp_path, node_log_restored):
    rc, _, err = run_cli(
        capsys, ["listen", "--weights", tmp_path / "x.safetensors", "--send-to", "https://u:secret@pacs/dw"]
    )
    assert rc == 2 and "--send-credentials" in err and "secret" not in err


# --------------------------------------------------------------------------- a bearer token


class StowStandIn(BaseHTTPRequestHandler):
    """POST /studies: 401 without the expected bearer token; else stores the multipart/related parts."""

    token = "t0ken.abc"
    seen: list[tuple[str | None, list[pydicom.Dataset]]] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        auth = self.headers.get("Authorization")
        if self.path.rstrip("/") != "/dicom-web/studies" or auth != f"Bearer {self.token}":
            self.seen.append((auth, []))
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="test"')
            self.end_headers()
            return
        # PS3.18 8.6.1.2: multipart/related; type="application/dicom"; each part a Part 10 instance
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = email.parser.BytesParser().parsebytes(head + body)
        assert message.get_content_type() == "multipart/related"
        assert message.get_param("type") == "application/dicom"
        stored = [
            pydicom.dcmread(io.BytesIO(part.get_payload(decode=True))) for part in message.get_payload()
        ]
        self.seen.append((auth, stored))
        answer = {
            "00081199": {
                "vr": "SQ",
                "Value": [{"00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]}} for ds in stored],
            }
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_bearer_token_from_the_environment(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), StowStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StowStandIn.seen = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        files = []
        for i in range(2):
            ds = phantom_dicom(3200 + i)
            files.append(tmp_path / f"{i}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        objects = [(str(d.SOPClassUID), str(d.SOPInstanceUID), "") for d in map(pydicom.dcmread, files)]
        good = StowRs(WebDestination(url), environ={"CXRDX_DICOMWEB_TOKEN": StowStandIn.token})
        assert good.send(files, objects) is None
        auth, stored = StowStandIn.seen[-1]
        assert [str(d.SOPInstanceUID) for d in stored] == [uid for _, uid, _ in objects]
        assert stored[0].PixelData == pydicom.dcmread(files[0]).PixelData
        wrong = StowRs(WebDestination(url), environ={"CXRDX_DICOMWEB_TOKEN": "expired"})
        with pytest.raises(DestinationUnavailable, match="401.*refused the credentials"):
            wrong.send(files, objects)
        assert StowStandIn.seen[-1][0] == "Bearer expired"
    finally:
        server.shutdown()


def test_https_server_checked_by_the_ca_and_our_client_certificate_shown(tmp_path):
    """https: --tls-ca checks the DICOMweb server, --tls-cert/--tls-key answer its request for a client certificate."""
    import ssl

    from tls_kit import make_pki

    from cxrdx.interop.tls import TlsFiles

    pki = make_pki(tmp_path / "pki")
    server = ThreadingHTTPServer(("127.0.0.1", 0), StowStandIn)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.pacs.cert), str(pki.pacs.key))
    context.verify_mode = ssl.CERT_REQUIRED  # the node's client certificate, signed by the CA
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StowStandIn.seen = []
    try:
        ds = phantom_dicom(3210)
        path = tmp_path / "film.dcm"
        ds.save_as(path, enforce_file_format=True)
        objects = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID), "")]
        url = WebDestination(f"https://127.0.0.1:{server.server_address[1]}/dicom-web")
        env = {"CXRDX_DICOMWEB_TOKEN": StowStandIn.token}
        with pytest.raises(DestinationUnavailable, match="SSL"):  # the system's CAs did not sign it
            StowRs(url, environ=env).send([path], objects)
        with pytest.raises(DestinationUnavailable):  # the CA, but no client certificate (a rogue one)
            StowRs(url, environ=env, tls=TlsFiles(pki.rogue.cert, pki.rogue.key, pki.ca)).send(
                [path], objects
            )
        assert not any(stored for _, stored in StowStandIn.seen)
        node = StowRs(url, environ=env, tls=TlsFiles(pki.node.cert, pki.node.key, pki.ca))
        assert node.send([path], objects) is None
        assert [str(d.SOPInstanceUID) for d in StowStandIn.seen[-1][1]] == [str(ds.SOPInstanceUID)]
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- a real Orthanc


def test_results_by_stow_rs_with_basic_auth_a_rotated_password_is_picked_up(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cxrdx.node")
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, users=USERS)
    creds = credentials_file(tmp_path / "dicomweb.env", "cxrdx", "old-password")
    node = web_node(tmp_path, orthanc.dicomweb_url, credentials_file=creds)
    try:
        sources = [phantom_dicom(3300 + i) for i in range(2)]
        assert store(node.address[1], sources, "CXRDX") == [0, 0]
        wait_for(lambda: "HTTP 401" in caplog.text, 20, "the refused credentials in the log")
        assert "old-password" not in caplog.text
        wait_for(lambda: node.spool.counts()["outbox"] == 2, 20, "both result sets waiting in the spool")
        assert orthanc.get("/instances") == [], "nothing stored with the wrong password"
        credentials_file(creds, "cxrdx", USERS["cxrdx"])  # the site rotates the password
        for ds in sources:
            uid = result_uid(ds.SOPInstanceUID)
            wait_for(
                lambda uid=uid: orthanc.find(SOPInstanceUID=uid), 30, "the results in Orthanc by STOW-RS"
            )
        wait_for(lambda: node.spool.counts()["outbox"] == 0, 10, "the spool to empty")
    finally:
        node.stop()
        orthanc.stop()


def test_stow_rs_endpoint_down_then_back(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cxrdx.node")
    http_port = free_port()
    node = web_node(tmp_path, f"http://127.0.0.1:{http_port}/dicom-web")
    orthanc = None
    try:
        sources = [phantom_dicom(3400 + i) for i in range(3)]
        assert store(node.address[1], sources, "CXRDX") == [0, 0, 0]
        wait_for(lambda: "destination unavailable" in caplog.text, 20, "the sender to find the endpoint down")
        wait_for(lambda: node.spool.counts()["outbox"] == 3, 20, "the results in the spool")
        (tmp_path / "orthanc").mkdir()
        orthanc = Orthanc(tmp_path / "orthanc", http_port=http_port, dicomweb=True)
        for ds in sources:
            uid = result_uid(ds.SOPInstanceUID)
            wait_for(
                lambda uid=uid: orthanc.find(SOPInstanceUID=uid), 40, "the results once the endpoint is back"
            )
    finally:
        node.stop()
        if orthanc is not None:
            orthanc.stop()


def test_sigkill_while_the_stow_rs_endpoint_is_down_then_restart(tmp_path):
    """`cxrdx listen` as a site runs it: killed while it holds unsent results, restarted, the endpoint back."""
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    http_port = free_port()
    url = f"http://127.0.0.1:{http_port}/dicom-web"
    creds = credentials_file(tmp_path / "dicomweb.env", "cxrdx", USERS["cxrdx"])
    spool = tmp_path / "spool"
    port = free_port()
    node = Listener(ckpt, url, spool, port, "--send-credentials", str(creds))
    sources = [phantom_dicom(3500 + i) for i in range(6)]
    assert store(port, sources, "CXRDX") == [0] * len(sources)
    wait_for(lambda: "destination unavailable" in node.text(), 60, "the node to find the endpoint down")
    node.kill()
    again = Listener(ckpt, url, spool, port, "--send-credentials", str(creds))
    orthanc = None
    try:
        (tmp_path / "orthanc").mkdir()
        orthanc = Orthanc(tmp_path / "orthanc", http_port=http_port, dicomweb=True, users=USERS)
        studies = {str(ds.StudyInstanceUID) for ds in sources}

        def delivered():
            got = {s: orthanc.find(StudyInstanceUID=s, Modality="SR") for s in studies}
            return got if all(got.values()) else None

        got = wait_for(delivered, 120, "every acknowledged image's SR after the restart", interval=1.0)
        assert all(len(v) == 1 for v in got.values()), "a resend replaces, it does not duplicate"
        assert "resuming the spool" in again.text() and "by STOW-RS" in again.text()
    finally:
        again.stop()
        if orthanc is not None:
            orthanc.stop()


def test_predict_format_dicom_sends_by_stow_rs(tmp_path, capsys, monkeypatch):
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, users=USERS)
    try:
        ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
        source = phantom_dicom(3600)
        source.save_as(tmp_path / "film.dcm", enforce_file_format=True)
        argv = [
            "predict",
            "--weights",
            ckpt,
            tmp_path / "film.dcm",
            "--format",
            "dicom",
            "--out",
            tmp_path / "out",
        ]
        rc, _, err = run_cli(capsys, [*argv, "--send-to", orthanc.dicomweb_url])
        assert rc != 0 and "HTTP 401" in err, "no credentials: refused, and said so in one line"
        monkeypatch.setenv("CXRDX_DICOMWEB_USER", "cxrdx")
        monkeypatch.setenv("CXRDX_DICOMWEB_PASSWORD", USERS["cxrdx"])
        rc, _, err = run_cli(capsys, [*argv, "--send-to", orthanc.dicomweb_url])
        assert rc == 0, err
        written = sorted((tmp_path / "out").glob("*.dcm"))
        assert "by STOW-RS" in err and f"sent {len(written)} result file(s)" in err
        for path in written:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert orthanc.find(SOPInstanceUID=uid), f"{path.name} in Orthanc"
        rc, _, err = run_cli(capsys, [*argv, "--format", "csv", "--send-to", orthanc.dicomweb_url])
        assert rc == 2 and "--format dicom" in err
    finally:
        orthanc.stop()
