"""Sending the node's results to the destination (a PACS) by C-STORE, with retries and backoff.

The :class:`Sender` takes result folders from the spool's outbox, oldest first, and sends
every file in one over an association it keeps open while there is work. A folder is
removed from the spool only after the destination answered Success (or a Warning) for
each of its files, so a crash or a lost connection at any point means the folder is sent
again: delivery is *at least once*. The objects' UIDs are derived from the source
instance, so a second copy replaces the first at the destination.

When the destination cannot be reached or drops the association, the sender waits
(0.5 s, doubling, at most 30 s by default) and tries again, for ever: results wait in the
spool meanwhile. A destination that answers with a failure status for a folder's file
``max_refusals`` times in a row is refusing that object, not unavailable: the folder is
parked in ``undeliverable/`` with the reason, and the rest of the queue moves on.

A delivered folder that cannot be removed from the spool (a read-only disk) is not sent
again: the sender remembers it, logs it, and retries the removal with the same backoff;
meanwhile the node refuses new images (0xA700). After a restart such a folder is sent once
more (at least once), which the stable UIDs make harmless.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cxrdx.errors import ConfigError
from cxrdx.interop.guard import shown
from cxrdx.interop.spool import Spool

log = logging.getLogger("cxrdx.node")

_DEST = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")
SUCCESS_OR_WARNING = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@HOST:PORT`` -> Destination (ConfigError with an example otherwise)."""
    m = _DEST.match(text.strip())
    if not m or not (0 < int(m["port"]) < 65536) or not m["aet"].strip():
        raise ConfigError(
            f"--send-to {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242 "
            "(the destination's AE title, at most 16 characters, its host and DICOM port)"
        )
    return Destination(m["aet"].strip(), m["host"].strip("[]"), int(m["port"]))


class DestinationUnavailable(Exception):
    """No association, or it was lost: wait and try again."""


class Sender:
    """Delivers the outbox to ``destination``; run it in a thread (:meth:`run`)."""

    def __init__(
        self,
        spool: Spool,
        destination: Destination,
        *,
        ae_title: str = "CXRDX",
        backoff: tuple[float, float] = (0.5, 30.0),
        max_refusals: int = 5,
        timeout: float = 30.0,
        idle_release: float = 2.0,
    ) -> None:
        from pynetdicom import AE

        self.spool = spool
        self.destination = destination
        self.backoff = backoff
        self.max_refusals = max_refusals
        self.idle_release = idle_release
        self.ae = AE(ae_title=ae_title)
        self.ae.acse_timeout = timeout
        self.ae.dimse_timeout = timeout
        self.ae.network_timeout = timeout
        self._assoc = None
        self._contexts: set[tuple[str, str]] = set()  # (SOP class, transfer syntax) asked for
        self._refusals: dict[str, int] = {}
        self.wake = threading.Event()
        self.unremoved: set[str] = set()  # delivered folders the spool could not drop: never resent
        self.delivered = 0  # result folders delivered by this process (for logs and tests)

    # ------------------------------------------------------------------ one association

    def _association(self, needed: set[tuple[str, str]]):
        if self._assoc is not None and self._assoc.is_established and needed <= self._contexts:
            return self._assoc
        self.close()
        wanted = self._contexts | needed
        # one context per (SOP class, transfer syntax) the files have: they are streamed as stored; for a
        # compressed one (the heatmap SEG's JPEG-LS) also Explicit VR Little Endian, sent decoded to a peer
        # that takes no compressed syntax (see _payload)
        self.ae.requested_contexts = []
        plain = {(sop, EXPLICIT) for sop, ts in wanted if ts not in UNCOMPRESSED}
        for sop, ts in sorted(wanted | plain)[:128]:
            self.ae.add_requested_context(sop, [ts])
        d = self.destination
        try:
            assoc = self.ae.associate(d.host, d.port, ae_title=d.ae_title)
        except (OSError, RuntimeError, ValueError) as exc:
            raise DestinationUnavailable(f"cannot connect to {d}: {exc}") from None
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "no answer / connection refused"
            raise DestinationUnavailable(f"{d}: {why}")
        self._assoc = assoc
        self._contexts = wanted
        return assoc

    def close(self) -> None:
        if self._assoc is not None:
            try:
                if self._assoc.is_established:
                    self._assoc.release()
            except Exception:  # noqa: BLE001 - closing a broken association
                pass
            self._assoc = None

    # ------------------------------------------------------------------ one folder

    def deliver(self, results: Path) -> bool:
        """Send one outbox folder; True when all of it was accepted (the folder is then removed).

        Raises DestinationUnavailable when the destination cannot be reached or drops the association.
        """
        from pydicom.filereader import read_file_meta_info
        from pynetdicom import _config

        # Send each file's bytes as they are on disk (no decoding and re-encoding in this process).
        _config.STORE_SEND_CHUNKED_DATASET = True
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
        needed = {(sop, ts) for sop, _, ts in objects}
        for path, (sop, uid, ts) in zip(files, objects, strict=True):
            assoc = self._association(needed)
            try:
                status = assoc.send_c_store(_payload(assoc, path, sop, ts))
            except (OSError, RuntimeError) as exc:
                self.close()
                raise DestinationUnavailable(f"{self.destination}: {exc}") from None
            except (ValueError, AttributeError) as exc:  # no accepted context for it, or it cannot be read
                self._refused(results, f"{path.name} ({sop}) cannot be sent to {self.destination}: {exc}")
                return False
            code = int(status.Status) if "Status" in status else None
            if code is None:  # aborted, timed out or no valid answer
                self.close()
                raise DestinationUnavailable(f"{self.destination}: no answer to C-STORE of {path.name}")
            if code not in SUCCESS_OR_WARNING:
                self._refused(results, f"{self.destination} refused {uid} ({sop}) with status 0x{code:04X}")
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
                if self._assoc is not None and time.monotonic() - idle_since > self.idle_release:
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


EXPLICIT = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
UNCOMPRESSED = {"1.2.840.10008.1.2", EXPLICIT, "1.2.840.10008.1.2.2"}


def _payload(assoc, path: Path, sop: str, ts: str):
    """The file as stored, or decoded to Explicit VR Little Endian when the peer took only that context for it."""
    accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
    if ts in UNCOMPRESSED or (sop, ts) in accepted or (sop, EXPLICIT) not in accepted:
        return path  # as stored (no accepted context at all: pynetdicom says so, the caller refuses it)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.decompress()  # e.g. the SEG's JPEG-LS frames, for a PACS without that codec
    return ds
