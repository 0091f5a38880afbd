"""C-STORE of result files to a DICOM peer over one association, kept open while there is work (DICOM TLS optional).

One presentation context per (SOP class, transfer syntax) the files have: each file's bytes
go out as they are on disk; for a compressed one (the heatmap SEG's JPEG-LS) Explicit VR Little
Endian is proposed too, and the file is sent decoded only to a peer that takes no compressed syntax. With :class:`TlsFiles` the
association is TLS, this node's certificate shown and the peer's checked against the CA
and the host name (cxrdx.interop.tls).
"""

from __future__ import annotations

from pathlib import Path

from cxrdx.interop.destination import Destination, DestinationUnavailable
from cxrdx.interop.tls import TlsFiles

SUCCESS_OR_WARNING = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}
EXPLICIT = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
UNCOMPRESSED = {"1.2.840.10008.1.2", EXPLICIT, "1.2.840.10008.1.2.2"}


class CStore:
    """The transport for a :class:`Destination` (see cxrdx.interop.send.Sender)."""

    def __init__(
        self, destination: Destination, *, ae_title: str, timeout: float, tls: TlsFiles | None = None
    ) -> None:
        from pynetdicom import AE

        self.destination = destination
        self.ae = AE(ae_title=ae_title)
        self.ae.acse_timeout = timeout
        self.ae.dimse_timeout = timeout
        self.ae.network_timeout = timeout
        self.tls_args = (tls.client_context(), destination.host) if tls else None
        self._assoc = None
        self._contexts: set[tuple[str, str]] = set()  # (SOP class, transfer syntax) asked for

    def _association(self, needed: set[tuple[str, str]]):
        if self._assoc is not None and self._assoc.is_established and needed <= self._contexts:
            return self._assoc
        self.close()
        wanted = self._contexts | needed
        self.ae.requested_contexts = []
        plain = {(sop, EXPLICIT) for sop, ts in wanted if ts not in UNCOMPRESSED}
        for sop, ts in sorted(wanted | plain)[:128]:
            self.ae.add_requested_context(sop, [ts])
        d = self.destination
        try:
            assoc = self.ae.associate(d.host, d.port, ae_title=d.ae_title, tls_args=self.tls_args)
        except (OSError, RuntimeError, ValueError) as exc:
            raise DestinationUnavailable(f"cannot connect to {d}: {exc}") from None
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "no answer / connection refused"
            if self.tls_args and not assoc.is_rejected:
                why += " / TLS handshake failed"
            raise DestinationUnavailable(f"{d}: {why}")
        self._assoc = assoc
        self._contexts = wanted
        return assoc

    def send(self, files: list[Path], objects: list[tuple[str, str, str]]) -> str | None:
        """C-STORE each file; None when all were accepted, else why one was refused.

        ``objects``: each file's (SOP class, SOP instance, transfer syntax) UIDs. Raises
        DestinationUnavailable when the destination cannot be reached or drops the association.
        """
        from pynetdicom import _config

        _config.STORE_SEND_CHUNKED_DATASET = True  # the bytes as stored
        needed = {(sop, ts) for sop, _, ts in objects}
        for path, (sop, uid, ts) in zip(files, objects, strict=True):
            assoc = self._association(needed)
            try:
                status = assoc.send_c_store(_payload(assoc, path, sop, ts))
            except (OSError, RuntimeError) as exc:
                self.close()
                raise DestinationUnavailable(f"{self.destination}: {exc}") from None
            except (ValueError, AttributeError) as exc:  # no accepted context for it, or it cannot be read
                return f"{path.name} ({sop}) cannot be sent to {self.destination}: {exc}"
            code = int(status.Status) if "Status" in status else None
            if code is None:  # aborted, timed out or no valid answer
                self.close()
                raise DestinationUnavailable(f"{self.destination}: no answer to C-STORE of {path.name}")
            if code not in SUCCESS_OR_WARNING:
                return f"{self.destination} refused {uid} ({sop}) with status 0x{code:04X}"
        return None

    @property
    def connected(self) -> bool:
        return self._assoc is not None

    def close(self) -> None:
        if self._assoc is not None:
            try:
                if self._assoc.is_established:
                    self._assoc.release()
            except Exception:  # noqa: BLE001 - closing a broken association
                pass
            self._assoc = None


def _payload(assoc, path: Path, sop: str, ts: str):
    """The file as stored, or decoded to Explicit VR Little Endian when the peer took only that context for it."""
    accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
    if ts in UNCOMPRESSED or (sop, ts) in accepted or (sop, EXPLICIT) not in accepted:
        return path  # as stored (no accepted context at all: pynetdicom says so, the caller refuses it)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.decompress()  # e.g. the SEG's JPEG-LS frames, for a PACS without that codec
    return ds
