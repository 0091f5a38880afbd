"""Helpers for the DICOM node tests: a tiny checkpoint, phantom DICOMs, a real Orthanc, a listener process."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest
import testkit
from conftest import free_port

REPO = Path(__file__).resolve().parents[2]
ORTHANC_BIN = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
DCMTK_ECHOSCU = "/usr/bin/echoscu" if Path("/usr/bin/echoscu").exists() else None  # .venv's is pynetdicom's
DICOMWEB_PLUGIN = next(
    (
        p
        for p in (
            Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
            *sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*")),
        )
        if p.exists()
    ),
    None,
)  # Debian's orthanc-dicomweb
TINY_POSITIVE = "Cardiomegaly"  # threshold 0 in the tiny checkpoint: always positive, so one SC per image


def tiny_checkpoint(path: Path, size: int = 32) -> Path:
    """densenet-tiny, 1 channel, 32 px; Cardiomegaly always positive, every other finding negative."""
    from cxrdx.labels import FINDINGS

    thresholds = {name: (0.0 if name == TINY_POSITIVE else 1.01) for name in FINDINGS}
    # an evaluation on record, so `cxrdx listen` serves it without --allow-demo-model (cxrdx.model.card)
    evaluation = {"mean_auroc": 0.5, "dataset": "node test fixture (not a real evaluation)"}
    return testkit.tiny_checkpoint(
        path, size, thresholds=thresholds, threshold_method="test", evaluation=evaluation
    )


def phantom_dicom(
    i: int,
    size: int = 64,
    *,
    view: str | None = "PA",
    modality: str = "DX",
    sop_class: str | None = None,
    **attrs,
):
    """A DX-for-presentation phantom chest film, its own patient and study (so its results are findable)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from cxrdx.phantom.render import make_phantom

    img, _ = make_phantom(np.random.default_rng(i), size, [])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class or pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = f"PHANTOM{i:04d}"
    ds.PatientName = f"Phantom^{i}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = str(i)
    ds.AccessionNumber = f"A{i:05d}"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if view is not None:
        ds.ViewPosition = view
    ds.set_pixel_data(img, "MONOCHROME2", 8)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write_phantoms(folder: Path, n: int, start: int = 0, **kw) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        path = folder / f"phantom_{i:04d}.dcm"
        phantom_dicom(i, **kw).save_as(path, enforce_file_format=True)
        out.append(path)
    return out


# --------------------------------------------------------------------------- Orthanc

# The routing script the README documents is the one the tests run.
LUA_ROUTE = (REPO / "docs" / "orthanc-route.lua").read_text()


class Orthanc:
    """A real Orthanc started from the test: temporary config and storage, loopback ports."""

    def __init__(
        self,
        workdir: Path,
        node_port: int | None = None,
        route: bool = False,
        *,
        http_port: int | None = None,
        dicomweb: bool = False,
        users: dict[str, str] | None = None,
        dicom_tls: dict[str, Path] | None = None,
    ) -> None:
        """``dicomweb``: load the DICOMweb plugin (under /dicom-web/); ``users``: HTTP basic auth for
        them; ``dicom_tls``: {"cert", "key", "ca"} PEM paths, DICOM TLS with peers' certificates required."""
        if ORTHANC_BIN is None:
            pytest.skip(
                "Orthanc is not installed (Debian package `orthanc`; `make test` installs it with apt)"
            )
        if dicomweb and DICOMWEB_PLUGIN is None:
            pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian `orthanc-dicomweb`)")
        self.workdir = workdir
        self.http_port = http_port or free_port()
        self.dicom_port = free_port()
        self.auth = None
        if users:
            user, password = next(iter(users.items()))
            self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.aet = "ORTHANC"
        config = {
            "Name": "cxrdx-test",
            "StorageDirectory": str(workdir / "db"),
            "IndexDirectory": str(workdir / "db"),
            "StorageCompression": False,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            "OverwriteInstances": True,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "DicomModalities": {"cxrdx": ["CXRDX", "127.0.0.1", node_port or 1]},
            "Plugins": [],
        }
        if dicomweb:
            config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        if users:
            config["AuthenticationEnabled"] = True
            config["RegisteredUsers"] = dict(users)
        if dicom_tls:
            config["DicomTlsEnabled"] = True
            config["DicomTlsCertificate"] = str(dicom_tls["cert"])
            config["DicomTlsPrivateKey"] = str(dicom_tls["key"])
            config["DicomTlsTrustedCertificates"] = str(dicom_tls["ca"])
            config["DicomTlsRemoteCertificateRequired"] = True
        if route:
            (workdir / "route.lua").write_text(LUA_ROUTE)
            config["LuaScripts"] = [str(workdir / "route.lua")]
        (workdir / "orthanc.json").write_text(json.dumps(config, indent=1))
        self.log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [ORTHANC_BIN, str(workdir / "orthanc.json")],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            with suppress(OSError):
                self.get("/system")
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"Orthanc did not start:\n{(workdir / 'orthanc.log').read_text()[-3000:]}")
            time.sleep(0.1)

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def _request(self, path: str, **kw) -> urllib.request.Request:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", **kw)
        if self.auth:
            req.add_header("Authorization", self.auth)
        return req

    def get(self, path: str):
        with urllib.request.urlopen(self._request(path), timeout=10) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, obj):
        req = self._request(path, data=json.dumps(obj).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def find(self, **query) -> list[dict]:
        """Instances matching DICOM tags (e.g. Modality='SR'), with their main tags."""
        return self.post("/tools/find", {"Level": "Instance", "Query": query, "Expand": True})

    def tags(self, instance_id: str) -> dict:
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- the listener, as a user runs it


class Listener:
    """``cxrdx listen`` in a subprocess; ready when it answers C-ECHO."""

    def __init__(
        self, weights: Path, send_to: str, spool: Path, port: int | None = None, *extra: str, tls_args=None
    ) -> None:
        """``tls_args``: (ssl context, host) when the listener takes DICOM TLS only (for the C-ECHO it waits on)."""
        self.port = port or free_port()
        self.log_path = spool.parent / f"{spool.name}-listen-{self.port}-{time.monotonic_ns()}.log"
        self.args = [
            sys.executable,
            "-m",
            "cxrdx",
            "listen",
            "--weights",
            str(weights),
            "--port",
            str(self.port),
            "--send-to",
            send_to,
            "--spool",
            str(spool),
            "--workers",
            "1",
            "--result-workers",
            "2",
            *extra,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while not echo(self.port, tls_args=tls_args):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"cxrdx listen did not start:\n{self.text()[-3000:]}")
            time.sleep(0.2)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """The listener's child processes (its result workers), from /proc (Linux)."""
        try:
            return [
                int(p)
                for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            ]
        except OSError:
            return []

    def kill(self) -> list[int]:
        """SIGKILL, as a crash would; returns the children it had (which must then go by themselves)."""
        children = self.children()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()
        return children

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.text()


def copy_results(paths):
    """A processor without a model: one 'result' per source, a secondary capture with a derived UID."""
    import io

    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = result_uid(ds.SOPInstanceUID)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        yield path, [buf.getvalue()]


def result_uid(uid: str) -> str:
    """The UID ``copy_results`` gives the result of source ``uid``."""
    import pydicom

    return pydicom.uid.generate_uid(entropy_srcs=[str(uid), "copied result"])


def alive(pid: int) -> bool:
    """A process that runs (a zombie nobody reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def echo(port: int, ae_title: str = "CXRDX", calling: str = "ECHOSCU", tls_args=None) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5  # connection: the TLS handshake too
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def store(port: int, datasets, ae_title: str, calling: str = "MODALITY", on_ack=None) -> list[int | None]:
    """C-STORE each dataset (or path) over one association; the statuses (None: no answer)."""
    import pydicom
    from pynetdicom import AE

    items = [pydicom.dcmread(d) if isinstance(d, str | Path) else d for d in datasets]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 120  # generous: CI machines may be loaded
    for sop, ts in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in items}):
        ae.add_requested_context(sop, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return [None] * len(items)
    out: list[int | None] = []
    for ds in items:
        if not assoc.is_established:
            out.append(None)
            continue
        try:
            status = assoc.send_c_store(ds)
        except Exception:  # noqa: BLE001 - the peer went away
            out.append(None)
            continue
        code = int(status.Status) if "Status" in status else None
        out.append(code)
        if on_ack is not None and code == 0:
            on_ack(ds)
    if assoc.is_established:
        assoc.release()
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
