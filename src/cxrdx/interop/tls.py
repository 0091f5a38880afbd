"""DICOM TLS for the node (PS3.15 Annex B, the BCP 195 profiles): its certificate, and peers verified by a CA.

:class:`TlsFiles` holds the three PEM files a site gives (``--tls-cert``, ``--tls-key``,
``--tls-ca``). With them the node's Storage SCP takes TLS connections only, and asks every
peer for a certificate signed by the CA (a peer with none, or with another CA's, is refused
during the handshake, before any DICOM); the sender presents the same certificate to the
destination and checks that the destination's certificate is signed by the CA *and* names
the host it was given (``--send-to``'s host: a DNS name or an IP address in the
certificate's subject alternative names). TLS 1.2 is the least accepted, as BCP 195 asks.

:func:`handshake_in_the_connection_thread`: pynetdicom's server does the TLS handshake in its
one accepting thread, so a peer that connects and sends nothing would stop everyone else
from connecting. The server is changed to accept at once and do the handshake in the
connection's own thread, with the same short wait as for the association request.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxrdx.errors import ConfigError

log = logging.getLogger("cxrdx.node")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # this node's certificate (PEM; may hold the chain)
    key: Path  # its private key (PEM, not encrypted)
    ca: Path  # the CA certificate(s) (PEM) that sign the peers' certificates

    @classmethod
    def from_options(cls, cert: str | None, key: str | None, ca: str | None) -> TlsFiles | None:
        """All three, or none (no TLS); ConfigError naming what is missing or unreadable."""
        given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
        if not any(given.values()):
            return None
        missing = [flag for flag, value in given.items() if not value]
        if missing:
            raise ConfigError(
                f"DICOM TLS needs --tls-cert, --tls-key and --tls-ca together; {', '.join(missing)} "
                "missing (this node's certificate and private key, and the CA that signs the peers')"
            )
        for flag, value in given.items():
            if not Path(value).is_file():
                raise ConfigError(f"{flag} {value}: no such file (a PEM file is expected)")
        files = cls(Path(cert), Path(key), Path(ca))
        files.server_context()  # a wrong key or a file that is not PEM: say so now, not at the first peer
        return files

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(purpose, cafile=str(self.ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"--tls-ca {self.ca}: not a readable PEM CA certificate ({exc})") from None
        try:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"--tls-cert {self.cert} / --tls-key {self.key}: cannot be used together ({exc}); give the "
                "PEM certificate and its unencrypted private key"
            ) from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """For the Storage SCP: every peer must show a certificate the CA signed."""
        return self._context(ssl.Purpose.CLIENT_AUTH)

    def client_context(self) -> ssl.SSLContext:
        """For associations to the destination: its certificate must be the CA's and name its host."""
        ctx = self._context(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = True
        return ctx


def handshake_in_the_connection_thread(
    server, timeout: float, on_failure: Callable[[tuple, str], None]
) -> None:
    """Move the TLS handshake of ``server`` (a pynetdicom server with an ``ssl_context``) out of its accept loop.

    ``on_failure(address, reason)`` is called for a connection whose handshake fails or times out
    (it is then closed, before any DICOM).
    """
    context: ssl.SSLContext = server.ssl_context
    plain_finish = server.finish_request

    def get_request():
        sock, address = server.socket.accept()
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def finish_request(request, client_address):
        try:
            request.settimeout(timeout)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket timeouts are OSErrors
            on_failure(client_address, _reason(exc, timeout))
            server.shutdown_request(request)  # closes it (pynetdicom closes only what raised)
            return
        plain_finish(request, client_address)

    server.get_request = get_request
    server.finish_request = finish_request


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no TLS handshake within {timeout:g} s"
    text = getattr(exc, "reason", None) or getattr(exc, "verify_message", None) or str(exc)
    text = str(text)
    if "WRONG_VERSION_NUMBER" in text.upper() or "HTTP_REQUEST" in text.upper():
        return f"not a TLS connection ({text}): a peer without TLS?"
    if "EOF" in text.upper():
        return (
            f"the peer closed the connection during the handshake ({text}); a port probe, or it refused ours"
        )
    if "CERTIFICATE" in text.upper():
        return f"certificate refused ({text}): its certificate must be signed by --tls-ca"
    return text
