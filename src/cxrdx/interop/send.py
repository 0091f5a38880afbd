"""Sending the node's results to the destination, with retries and backoff: C-STORE or STOW-RS.

The :class:`Sender` takes result folders from the spool's outbox, oldest first, and sends
every file in one through its transport: C-STORE over an association it keeps open while
there is work (cxrdx.interop.cstore, DICOM TLS optional), or one STOW-RS request per folder to
a DICOMweb service (cxrdx.interop.dicomweb). A folder is
removed from the spool only after the destination accepted each of its files (C-STORE
Success or a Warning; STOW-RS: listed as stored), so a crash or a lost connection at any
point means the folder is sent
again: delivery is *at least once*. The objects' UIDs are derived from the source
instance, so a second copy replaces the first at the destination.

When the destination cannot be reached or drops the association (for DICOMweb also: HTTP
5xx, 429, refused credentials), the sender waits
(0.5 s, doubling, at most 30 s by default) and tries again, for ever: results wait in the
spool meanwhile. A destination that refuses a folder's file
``max_refusals`` times in a row is refusing that object, not unavailable: the folder is
parked in ``undeliverable/`` with the reason, and the rest of the queue moves on.

A delivered folder that cannot be removed from the spool (a read-only disk) is not sent
again: the sender remembers it, logs it, and retries the removal with the same backoff;
meanwhile the node refuses new images (0xA700). After a restart such a folder is sent once
more (at least once), which the stable UIDs make harmless.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from cxrdx.errors import ConfigError, CxrdxError
from cxrdx.interop.destination import (  # noqa: F401 - Destination, parse_destination: used from here too
    CredentialsRefused,
    Destination,
    DestinationUnavailable,
    WebDestination,
    parse_destination,
)
from cxrdx.interop.guard import shown
from cxrdx.interop.spool import Spool
from cxrdx.interop.tls import TlsFiles

log = logging.getLogger("cxrdx.node")


def transport_for(
    destination: Destination | WebDestination,
    *,
    ae_title: str = "CXRDX",
    timeout: float = 30.0,
    tls: TlsFiles | None = None,
    credentials_file: str | os.PathLike | None = None,
):
    """The transport that sends to ``destination``: CStore or StowRs (their ``send`` and ``close``)."""
    if isinstance(destination, WebDestination):
        from cxrdx.interop.dicomweb import StowRs

        return StowRs(destination, credentials_file=credentials_file, timeout=timeout, tls=tls)
    if credentials_file is not None:
        raise ConfigError(
            "--send-credentials is for a DICOMweb destination (an http(s):// --send-to); a DICOM peer "
            "(AET@HOST:PORT) is authenticated by TLS certificates (--tls-cert, --tls-key, --tls-ca)"
        )
    from cxrdx.interop.cstore import CStore

    return CStore(destination, ae_title=ae_title, timeout=timeout, tls=tls)


class Sender:
    """Delivers the outbox to ``destination``; run it in a thread (:meth:`run`)."""

    def __init__(
        self,
        spool: Spool,
        destination: Destination | WebDestination,
        *,
        ae_title: str = "CXRDX",
        backoff: tuple[float, float] = (0.5, 30.0),
        max_refusals: int = 5,
        timeout: float = 30.0,
        idle_release: float = 2.0,
        tls: TlsFiles | None = None,
        credentials_file: str | os.PathLike | None = None,
    ) -> None:
        self.spool = spool
        self.destination = destination
        self.backoff = backoff
        self.max_refusals = max_refusals
        self.idle_release = idle_release
        self.transport = transport_for(
            destination, ae_title=ae_title, timeout=timeout, tls=tls, credentials_file=credentials_file
        )
        self._refusals: dict[str, int] = {}
        self.wake = threading.Event()
        self.unremoved: set[str] = set()  # delivered folders the spool could not drop: never resent
        self.delivered = 0  # result folders delivered by this process (for logs and tests)

    def close(self) -> None:
        self.transport.close()

    # ------------------------------------------------------------------ one folder

    def deliver(self, results: Path) -> bool:
        """Send one outbox folder; True when all of it was accepted (the folder is then removed).

        Raises DestinationUnavailable when the destination cannot be reached or drops the association.
        """
        from pydicom.filereader import read_file_meta_info

        try:
            files = self.spool.result_files(results)
            metas = [read_file_meta_info(f) for f in files]
            objects = [
                (str(m.MediaStorageSOPClassUID), str(m.MediaStorageSOPInstanceUID), str(m.TransferSyntaxUID))
                for m in metas
            ]
        except FileNotFoundError:  # removed meanwhile
            return False
        except Exception as exc:  # noqa: BLE001 - a result file we cannot read back: never sendable
            self.spool.give_up(results, f"cannot read a result file back: {exc}")
            log.error(
                "%s: results not sendable (%s); moved to %s",
                results.name,
                shown(exc),
                self.spool.undeliverable,
            )
            return False
        refused = self.transport.send(files, objects)
        if refused:
            self._refused(results, refused)
            return False
        self._refusals.pop(results.name, None)
        self.delivered += 1
        log.info(
            "sent %d result object(s) for %s to %s",
            len(files),
            results.name.split("-", 1)[-1],
            self.destination,
        )
        self._drop(results)
        return True

    def _drop(self, results: Path) -> bool:
        """Remove a delivered folder; when the spool will not let go, remember it (not to resend it)."""
        try:
            self.spool.sent(results)
        except OSError as exc:
            if results.name not in self.unremoved:
                log.error(
                    "%s was delivered but cannot be removed from the spool (%s): not sending it again; "
                    "retrying the removal with backoff, new images are refused (0xA700) meanwhile",
                    results.name,
                    shown(exc.strerror or exc),
                )
            self.unremoved.add(results.name)
            return False
        if results.name in self.unremoved:
            self.unremoved.discard(results.name)
            log.info("%s: removed from the spool at last", results.name)
        return True

    def _refused(self, results: Path, reason: str) -> None:
        n = self._refusals.get(results.name, 0) + 1
        self._refusals[results.name] = n
        if n >= self.max_refusals:
            self._refusals.pop(results.name, None)
            dest = self.spool.give_up(results, reason)
            log.error("%s (%d tries); results moved to %s", shown(reason, 300), n, dest)
        else:
            log.warning("%s (try %d of %d)", shown(reason, 300), n, self.max_refusals)

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        delay = self.backoff[0]
        idle_since = time.monotonic()
        removal_delay, removal_due = self.backoff[0], 0.0
        while not stop.is_set():
            if self.unremoved and time.monotonic() >= removal_due:  # delivered, still in the spool
                for name in sorted(self.unremoved):
                    self._drop(self.spool.outbox / name)
                removal_due = time.monotonic() + removal_delay
                removal_delay = min(removal_delay * 2, self.backoff[1]) if self.unremoved else self.backoff[0]
            items = [p for p in self.spool.outgoing() if p.name not in self.unremoved]
            if not items:
                if self.transport.connected and time.monotonic() - idle_since > self.idle_release:
                    self.close()
                wait = max(0.01, min(0.5, removal_due - time.monotonic())) if self.unremoved else 0.5
                self.wake.wait(wait)
                self.wake.clear()
                continue
            refused = False
            try:
                for item in items:
                    if stop.is_set():
                        break
                    refused |= not self.deliver(item)
                delay = self.backoff[0]
            except DestinationUnavailable as exc:
                log.warning("destination unavailable (%s); retrying in %.1f s", shown(exc, 300), delay)
                stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            except Exception as exc:  # noqa: BLE001 - the sender must keep going
                log.exception("unexpected error while sending results: %s", shown(exc))
                self.close()
                stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            idle_since = time.monotonic()
            if refused:
                stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
        self.close()


class SendError(CxrdxError):
    """Result files that could not be delivered (they stay where they were written)."""


def send_files(
    files: list[Path],
    destination: Destination | WebDestination,
    *,
    tls: TlsFiles | None = None,
    credentials_file: str | os.PathLike | None = None,
    attempts: int = 5,
    backoff: tuple[float, float] = (1.0, 8.0),
    per_request: int = 50,
) -> int:
    """Send result files once (``predict --format dicom --send-to``), retrying an unavailable destination.

    ``per_request`` files go in one STOW-RS request or over one association. Returns how many were
    sent; raises SendError when the destination stays unavailable or refuses a file.
    """
    from pydicom.filereader import read_file_meta_info

    transport = transport_for(destination, tls=tls, credentials_file=credentials_file)
    sent = 0
    try:
        for start in range(0, len(files), per_request):
            chunk = list(files[start : start + per_request])
            metas = [read_file_meta_info(f) for f in chunk]
            objects = [
                (str(m.MediaStorageSOPClassUID), str(m.MediaStorageSOPInstanceUID), str(m.TransferSyntaxUID))
                for m in metas
            ]
            delay = backoff[0]
            for attempt in range(1, attempts + 1):
                try:
                    refused = transport.send(chunk, objects)
                    break
                except DestinationUnavailable as exc:
                    if attempt == attempts or isinstance(exc, CredentialsRefused):
                        raise SendError(
                            f"--send-to {destination}: {shown(exc, 300)} ({attempt} {'try' if attempt == 1 else 'tries'}); {sent} of "
                            f"{len(files)} result files sent, all of them are in --out for a later send"
                        ) from None
                    log.warning("destination unavailable (%s); retrying in %.1f s", shown(exc, 300), delay)
                    time.sleep(delay)
                    delay = min(delay * 2, backoff[1])
            if refused:
                raise SendError(
                    f"--send-to {destination}: {shown(refused, 300)}; {sent} of {len(files)} result files sent"
                )
            sent += len(chunk)
    finally:
        transport.close()
    return sent
