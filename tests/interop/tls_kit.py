"""Certificates for the DICOM TLS tests, made by the OpenSSL command line: a test CA, peers it signs, a rogue peer."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

OPENSSL = shutil.which("openssl")
SAN = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"


@dataclass(frozen=True)
class Peer:
    cert: Path
    key: Path
    ca: Path  # the CA it trusts

    def files(self) -> dict[str, Path]:
        return {"cert": self.cert, "key": self.key, "ca": self.ca}

    def options(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]

    def client_args(self):
        """pynetdicom's ``tls_args`` for an association from this peer to 127.0.0.1."""
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx, "127.0.0.1"


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=cxrdx test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(key), "-out", str(cert), cwd=folder,
    )  # fmt: skip
    return cert, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path], trusts: Path) -> Peer:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr), cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text(SAN)
    _run(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-days", "2", "-extfile", "san.cnf", "-out", str(cert), cwd=folder,
    )  # fmt: skip
    return Peer(cert, key, trusts)


@dataclass(frozen=True)
class Pki:
    ca: Path
    node: Peer  # cxrdx listen
    modality: Peer  # storescu, signed by the CA
    pacs: Peer  # Orthanc, signed by the CA
    rogue: Peer  # signed by another CA (it trusts ours: only its own certificate is wrong)


def make_pki(folder: Path) -> Pki:
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed (it makes the test certificates)")
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other = _ca(folder, "other-ca")
    return Pki(
        ca[0],
        _signed(folder, "node", ca, ca[0]),
        _signed(folder, "modality", ca, ca[0]),
        _signed(folder, "pacs", ca, ca[0]),
        _signed(folder, "rogue", other, ca[0]),
    )
