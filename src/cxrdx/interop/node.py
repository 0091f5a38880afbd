"""The DICOM node behind ``cxrdx listen``: a Storage SCP that reads chest radiographs and sends results.

Three parts, each in its own thread(s), joined by the spool (``cxrdx.interop.spool``):

1. **Receiving** (pynetdicom's association threads, one per calling modality or PACS): answers
   C-ECHO; for a C-STORE of a CR, DX or DX-for-presentation image (or a radiograph stored as
   a Secondary Capture with Modality CR/DX, as SIIM-ACR ships them) it checks that the data
   set parses and holds its pixel data, writes it durably to the spool and only then answers
   Success. A truncated or malformed data set, or one whose transfer syntax the node cannot
   decode, is refused (0xC000, logged); pixel data that turns out to be corrupt only while
   it is decoded is acknowledged, then kept in ``failed/`` with the reason. When the spool
   cannot be written, or cannot take results (a full or read-only disk, see below), the
   answer is 0xA700 (out of resources), so the sender keeps the image and tries again.
   Connections are guarded (``cxrdx.interop.guard``): a limit per peer, a short wait for the
   association request, non-DICOM traffic logged, one object capped in size. Anything else
   (other modalities, SR, presentation states, non-chest body parts, lateral views unless
   ``allow_lateral``) is acknowledged, logged with the reason and not processed, even while
   the spool is in trouble: a PACS that routes a whole study here must not see failures for it.
2. **Working** (one thread): takes spooled images oldest first, in batches, through
   ``Processing`` (inference + the result objects), and puts the results in the outbox. The last
   results of a batch are still being built (in result worker processes) while the next batch goes
   through the network; their images stay in the spool, and out of the next batch, until written. When
   the outbox cannot be written, the worker keeps that one result set in memory and retries
   the write with backoff (no inference is redone) while the node answers 0xA700.
3. **Sending** (one thread, ``cxrdx.interop.send.Sender``): C-STOREs the results to the
   destination with retries and backoff.

Without TLS there is no authentication beyond AE titles (``allow_calling`` limits who may
connect): run it on a trusted network. With ``tls`` (cxrdx.interop.tls) it takes TLS
connections only, from peers whose certificate the CA signed, and sends over TLS; the
destination may also be a DICOMweb service (STOW-RS, cxrdx.interop.dicomweb). It binds to
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxrdx.errors import ConfigError
from cxrdx.interop.guard import Guard, Throttle, shown
from cxrdx.interop.send import Destination, Sender, WebDestination
from cxrdx.interop.spool import Spool
from cxrdx.interop.tls import TlsFiles, handshake_in_the_connection_thread

log = logging.getLogger("cxrdx.node")

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CHEST_IMAGE_CLASSES = {CR_IMAGE: "CR", DX_FOR_PRESENTATION: "DX", DX_FOR_PROCESSING: "DX for processing"}
# Radiographs that research archives ship as Secondary Capture (SIIM-ACR does) are read when their
# Modality says CR/DX and the picture is not one of ours (Manufacturer cxrdx, burned-in text).
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"}
CHEST_BODY_PARTS = ("CHEST", "THORA", "TORAX", "LUNG")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

Processor = Callable[[Sequence[Path]], Iterator[tuple[Path, "list[bytes] | str"]]]


@dataclass
class NodeConfig:
    ae_title: str = "CXRDX"
    host: str = "127.0.0.1"
    port: int = 11112
    destination: Destination | WebDestination | None = None
    spool: Path = Path("cxrdx-spool")
    allow_calling: list[str] | None = None  # None: any calling AE title
    allow_lateral: bool = False
    batch_size: int = 8
    max_batch: int = 64  # images taken from the spool at once (decoded ahead while the network runs)
    linger: float = 0.05  # wait this long for a batch to fill when fewer than batch_size are waiting
    backoff: tuple[float, float] = (0.5, 30.0)
    max_refusals: int = 5
    max_associations: int = 16
    max_per_peer: int = 8  # connections one peer address may hold at once
    request_timeout: float = 10.0  # seconds a new connection has to send its association request
    max_instance_mb: float = 128.0  # the largest object accepted (bytes on the wire)
    tls: TlsFiles | None = None  # DICOM TLS for receiving and for C-STORE (https too)
    credentials_file: Path | None = None  # DICOMweb credentials (else the environment)


def not_processed_reason(ds, allow_lateral: bool) -> str | None:
    """Why a parsed CR/DX (or radiograph-as-SC) data set is not a frontal chest radiograph we read, or None."""
    if str(ds.get("SOPClassUID", "")) == SECONDARY_CAPTURE:
        modality = str(ds.get("Modality", "") or "").strip().upper()
        if modality not in RADIOGRAPH_MODALITIES:
            return f"a secondary capture of modality {modality or 'unknown'}, not a radiograph"
        if (
            str(ds.get("Manufacturer", "")).strip().lower() == "cxrdx"
            or ds.get("BurnedInAnnotation") == "YES"
        ):
            return "a secondary capture with burned-in annotation (e.g. a cxrdx result), not an original film"
    body = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if body and not any(k in body for k in CHEST_BODY_PARTS):
        return f"body part examined is {body}, not chest"
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEWS and not allow_lateral:
        return f"lateral view ({view}); start the node with --allow-lateral to read laterals"
    return None


def parse_received(data: bytes):
    """(dataset, None) when the received bytes are an image we can spool, else (None, the problem)."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.SOPInstanceUID  # noqa: B018 - parsing is lazy: touch what we need
        rows, cols = int(ds.Rows), int(ds.Columns)
        if "PixelData" not in ds:
            return None, "no pixel data"
        pixels = ds.PixelData
    except Exception as exc:  # noqa: BLE001 - whatever the parser says, it is malformed
        return None, f"malformed data set ({type(exc).__name__}: {str(exc)[:200]})"
    if rows < 1 or cols < 1:
        return None, f"image size {rows} x {cols}"
    problem = undecodable(ds)
    if problem:
        return None, problem
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        bits = int(ds.get("BitsAllocated", 8) or 8)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = rows * cols * samples * frames * bits // 8
        if len(pixels) < expected:
            return None, f"truncated pixel data ({len(pixels)} of {expected} bytes)"
    elif len(pixels) < 16:
        return None, "truncated compressed pixel data"
    return ds, None


def undecodable(ds) -> str | None:
    """Why this node cannot decode the data set's pixels, as far as its header tells; else None."""
    from cxrdx.errors import ImageReadError
    from cxrdx.imaging.dicom import _check_decodable, _transfer_syntax

    try:
        _check_decodable(Path("received"), _transfer_syntax(ds))
    except ImageReadError as exc:
        return f"cannot decode: {str(exc).removeprefix('received: ')}"
    return None


class Node:
    """A running node: :meth:`start`, then :meth:`wait` or :meth:`stop`."""

    def __init__(self, config: NodeConfig, processor: Processor) -> None:
        if config.destination is None:
            raise ConfigError("the node needs a destination for its results (--send-to AET@HOST:PORT or URL)")
        self.config = config
        self.processor = processor
        self.spool = Spool(config.spool)
        self.sender = Sender(
            self.spool,
            config.destination,
            ae_title=config.ae_title,
            backoff=config.backoff,
            max_refusals=config.max_refusals,
            tls=config.tls,
            credentials_file=config.credentials_file,
        )
        self.stopping = threading.Event()
        self._work = threading.Event()
        self._server = None
        self._threads: list[threading.Thread] = []
        self.counts = {"received": 0, "ignored": 0, "refused": 0, "processed": 0, "failed": 0}
        self._lock = threading.Lock()
        self._last_arrival = 0.0
        self.guard = Guard(config.max_per_peer, int(config.max_instance_mb * 2**20), config.request_timeout)
        self._held: tuple[Path, list[bytes] | str] | None = None  # an outcome the spool could not take yet
        self._say = Throttle()

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    # ------------------------------------------------------------------ receiving

    def spool_trouble(self) -> str | None:
        """Why the spool cannot take results now (then new images are refused with 0xA700), or None."""
        if self._held is not None:
            return "the spool cannot take results (disk full or read-only?)"
        if self.sender.unremoved:
            return "sent results cannot be removed from the spool (read-only?)"
        return None

    def _on_echo(self, event) -> int:
        self.guard.message_done(event.assoc)
        return STATUS_SUCCESS

    def _on_store(self, event) -> int:
        self.guard.message_done(event.assoc)
        req = event.request
        sop_class = str(req.AffectedSOPClassUID)
        uid = shown(req.AffectedSOPInstanceUID)
        calling = shown(event.assoc.requestor.ae_title)
        if sop_class not in CHEST_IMAGE_CLASSES and sop_class != SECONDARY_CAPTURE:
            from pydicom.uid import UID

            self._count("ignored")
            log.info(
                "%s from %s: acknowledged, not processed: %s is not a CR/DX image",
                uid,
                calling,
                shown(UID(sop_class).name),
            )
            return STATUS_SUCCESS
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # noqa: BLE001
            self._count("refused")
            log.warning(
                "%s from %s: refused (0xC000): cannot decode the request (%s)", uid, calling, shown(exc)
            )
            return STATUS_CANNOT_UNDERSTAND
        if len(data) > self.guard.max_instance_bytes:
            self._count("refused")
            log.warning(
                "%s from %s: refused (0xC000): %d bytes, more than --max-instance-mb %g",
                uid,
                calling,
                len(data),
                self.config.max_instance_mb,
            )
            return STATUS_CANNOT_UNDERSTAND
        ds, problem = parse_received(data)
        if problem:
            self._count("refused")
            log.warning("%s from %s: refused (0xC000): %s", uid, calling, shown(problem, 300))
            return STATUS_CANNOT_UNDERSTAND
        reason = not_processed_reason(ds, self.config.allow_lateral)
        if reason:
            self._count("ignored")
            log.info("%s from %s: acknowledged, not processed: %s", uid, calling, shown(reason, 300))
            return STATUS_SUCCESS
        trouble = self.spool_trouble()  # objects we do not process are still acknowledged above
        if trouble:
            self._count("refused")
            more = self._say("trouble")
            if more is not None:
                log.error("%s from %s: refused (0xA700): %s%s", uid, calling, trouble, more)
            return STATUS_OUT_OF_RESOURCES
        try:
            self.spool.receive(str(ds.SOPInstanceUID), data)
        except OSError as exc:
            log.error(
                "%s from %s: refused (0xA700): cannot write the spool (%s)",
                uid,
                calling,
                shown(exc.strerror or exc),
            )
            return STATUS_OUT_OF_RESOURCES
        self._count("received")
        self._last_arrival = time.monotonic()
        self._work.set()
        log.debug("%s from %s: received (%s)", uid, calling, CHEST_IMAGE_CLASSES.get(sop_class, "SC"))
        return STATUS_SUCCESS

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        calling = requestor.ae_title.strip()
        called = str(getattr(requestor.primitive, "called_ae_title", "") or "").strip()
        if self.config.allow_calling and calling not in self.config.allow_calling:
            why = "calling AE title not allowed (--allow-calling)"
        elif called != self.config.ae_title:
            why = f"called AE title {shown(called)!r} is not this node's ({self.config.ae_title})"
        else:
            why = f"all {self.config.max_associations} association slots are taken"
        more = self._say(("rejected", requestor.address, why))
        if more is not None:
            log.warning(
                "association from %s (%s) rejected: %s%s", shown(calling), shown(requestor.address), why, more
            )

    def _server_ae(self):
        from pydicom.uid import AllTransferSyntaxes
        from pynetdicom import AE, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.acse_timeout = self.config.request_timeout  # the ARTIM timer: the wait for an association request
        ae.require_called_aet = True
        if self.config.allow_calling:
            ae.require_calling_aet = list(self.config.allow_calling)
        syntaxes = list(AllTransferSyntaxes)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        return ae

    # ------------------------------------------------------------------ working

    def _in_flight(self) -> set[Path]:
        """Images whose results the processor is still building (a processor with ``stream`` and ``flush``)."""
        return set(getattr(self.processor, "in_flight", ()) or ())

    def _take(self) -> list[Path]:
        busy = self._in_flight()

        def waiting() -> list[Path]:
            return [p for p in self.spool.pending() if p not in busy]

        pending = waiting()
        # a burst may still be arriving: give it a moment to fill a batch
        if (
            0 < len(pending) < self.config.batch_size
            and time.monotonic() - self._last_arrival < self.config.linger
        ):
            self.stopping.wait(self.config.linger)
            pending = waiting()
        return pending[: self.config.max_batch]

    def _write(self, path: Path, outcome: list[bytes] | str, retry: bool = False) -> None:
        """Put one outcome in the spool; when the spool cannot take it, hold it for :meth:`_retry_held`."""
        try:
            if isinstance(outcome, str):
                dest = self.spool.fail(path, outcome)
            else:
                self.spool.put_results(path, outcome)
        except FileNotFoundError:
            raise
        except OSError as exc:
            self._held = (path, outcome)
            if not retry:
                log.error(
                    "%s: the spool cannot take its results (%s); keeping them in memory, retrying the write "
                    "with backoff and refusing new images (0xA700) until it can",
                    path.stem,
                    shown(exc.strerror or exc),
                )
            return
        if isinstance(outcome, str):
            self._count("failed")
            log.warning("%s: not processed: %s (kept in %s)", path.stem, shown(outcome, 300), dest.parent)
        else:
            self._count("processed")
            self.sender.wake.set()
            log.info("%s: processed, %d result object(s)", path.stem, len(outcome))

    def _retry_held(self, pause: float) -> float:
        """Try the held outcome again; the next pause (backoff) while the spool still cannot take it."""
        path, outcome = self._held
        self._held = None
        try:
            self._write(path, outcome, retry=True)
        except FileNotFoundError:  # the source went meanwhile (a half-done move): nothing left to write
            return self.config.backoff[0]
        if self._held is None:
            log.info("%s: the spool takes results again", path.stem)
            return self.config.backoff[0]
        self.stopping.wait(pause)
        return min(pause * 2, self.config.backoff[1])

    def _work_loop(self) -> None:
        pause = self.config.backoff[0]
        while not self.stopping.is_set():
            if self._held is not None:
                pause = self._retry_held(pause)
                continue
            batch = self._take()
            overlap = hasattr(self.processor, "stream") and hasattr(self.processor, "flush")
            if not batch and not (overlap and self._in_flight()):
                self._work.wait(0.5)
                self._work.clear()
                continue
            try:
                # with ``stream`` the last results of a batch are still being built while the next batch goes
                # through the network; ``flush`` finishes them when no image is waiting
                if not batch:
                    outcomes = self.processor.flush()
                else:
                    outcomes = self.processor.stream(batch) if overlap else self.processor(batch)
                for path, outcome in outcomes:
                    self._write(path, outcome)
                    if self.stopping.is_set() or self._held is not None:
                        break
                if hasattr(outcomes, "close"):
                    outcomes.close()
                pause = self.config.backoff[0]
            except FileNotFoundError:  # a file replaced by a new copy meanwhile: take the spool again
                continue
            except Exception as exc:  # noqa: BLE001 - the worker must keep going; the spool keeps the work
                log.exception("processing failed (%s); retrying in %.1f s", exc, pause)
                self.stopping.wait(pause)
                pause = min(pause * 2, self.config.backoff[1])

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        from pynetdicom import evt

        left = self.spool.recover()
        if left["inbox"] or left["outbox"]:
            log.info(
                "resuming the spool %s: %d image(s) to process, %d result set(s) to send",
                self.spool.root,
                left["inbox"],
                left["outbox"],
            )
        ae = self._server_ae()
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
            *self.guard.handlers(),
        ]
        tls = self.config.tls
        try:
            self._server = ae.start_server(
                (self.config.host, self.config.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=tls.server_context() if tls else None,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.config.host}:{self.config.port} ({exc.strerror or exc}): "
                "is another program using the port? Choose another with --port"
            ) from None
        self.guard.install(self._server)
        if tls is not None:
            handshake_in_the_connection_thread(
                self._server, self.config.request_timeout, self.guard.tls_failed
            )
        self._threads = [
            threading.Thread(target=self._work_loop, name="cxrdx-node-work", daemon=True),
            threading.Thread(
                target=self.sender.run, args=(self.stopping,), name="cxrdx-node-send", daemon=True
            ),
        ]
        for t in self._threads:
            t.start()
        self._work.set()
        self.sender.wake.set()

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2] if self._server else (self.config.host, self.config.port)

    def wait(self) -> None:
        while not self.stopping.wait(0.5):
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving, let the worker and the sender finish what they hold; the spool keeps the rest."""
        self.guard.quiet = True
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.stopping.set()
        self._work.set()
        self.sender.wake.set()
        for t in self._threads:
            t.join(timeout)

    def idle(self) -> bool:
        """Nothing left to process or send."""
        c = self.spool.counts()
        return c["inbox"] == 0 and c["outbox"] == 0


def parse_ae_titles(text: str | Iterable[str] | None) -> list[str] | None:
    """``AET,AET`` -> a list of AE titles (each 1-16 characters), or None for "any"."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    titles = [t.strip() for t in items if t.strip()]
    bad = [t for t in titles if len(t) > 16 or "\\" in t]
    if bad or not titles:
        raise ConfigError(
            f"--allow-calling {text!r}: give AE titles separated by commas, each at most 16 characters"
        )
    return titles
