"""The DICOM node's connection guard: what one peer may hold, and what its bytes may do to the log.

- **A per-peer limit**: a peer address (IP) holds at most ``max_per_peer`` connections at once;
  one more is closed as it is accepted, before any DICOM, with a log line. Idle sockets from
  one host cannot fill the node's association slots for everyone else. (A host that shares
  its address with the idle sockets waits until they time out: the node cannot tell them apart.)
- **A short wait for the association request**: pynetdicom's ARTIM timer (``AE.acse_timeout``)
  closes a connection that sends no A-ASSOCIATE-RQ within ``request_timeout`` seconds (the
  node sets it); the guard logs it as what it is, an idle connection, not a rejected AE title.
- **Non-DICOM traffic** (an HTTP request, a TLS hello, a port probe that sends bytes) ends the
  connection at its first bytes and is logged as such. With DICOM TLS, a failed handshake (no
  certificate, one the CA did not sign, a peer without TLS) is logged by :meth:`Guard.tls_failed`.
- **A cap on one instance**: the bytes an association sends for one message are counted as they
  arrive; past ``max_instance_bytes`` the association is aborted, before the whole object sits
  in memory.
- :func:`shown`: every value a peer chose (UIDs, AE titles, parser messages) goes through it
  before it reaches a log line: control characters are escaped, so a UID holding a newline
  cannot forge a log line, and long values are cut.

Log lines about one peer repeat at most once per ``every`` seconds, with a count of the rest.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("cxrdx.node")

SHOWN_CHARS = 160


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` as text safe for one log line: control and other unprintable characters escaped, cut at ``limit``."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Throttle:
    """At most one log line per key and ``every`` seconds; says how many were held back."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[object, float] = {}
        self._held: dict[object, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: object) -> str | None:
        """None: stay quiet; else a suffix for the line ("" or " (N more since the last line)")."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < self.every:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            held = self._held.pop(key, 0)
        return f" ({held} more like it since the last line)" if held else ""


class Guard:
    """Install with :meth:`install` on the running server and bind :meth:`handlers`."""

    def __init__(self, max_per_peer: int, max_instance_bytes: int, request_timeout: float) -> None:
        self.max_per_peer = max_per_peer
        self.max_instance_bytes = max_instance_bytes
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._admitted: dict[str, int] = {}  # accepted, association object not made yet
        self._live: dict[int, tuple[object, str]] = {}  # id(assoc) -> (assoc, peer address)
        self._bytes: dict[int, int] = {}  # id(assoc) -> bytes received since the last message was handled
        self._say = Throttle()
        self.refused = 0  # connections closed by the per-peer limit (for logs and tests)
        self.quiet = False  # set while the node stops: connections it ends are not the peers' doing

    # ------------------------------------------------------------------ the per-peer limit

    def install(self, server) -> None:
        """socketserver asks ``verify_request`` before it hands a connection on: False closes it."""
        server.verify_request = self.verify

    def _held_by(self, peer: str) -> int:
        for key, (assoc, _) in list(self._live.items()):
            if assoc.ident is not None and not assoc.is_alive():  # ended without a close event
                self._forget(key)
        return self._admitted.get(peer, 0) + sum(1 for _, p in self._live.values() if p == peer)

    def verify(self, request, client_address) -> bool:
        peer = str(client_address[0])
        with self._lock:
            held = self._held_by(peer)
            if held < self.max_per_peer:
                self._admitted[peer] = self._admitted.get(peer, 0) + 1
                return True
            self.refused += 1
        more = self._say(("limit", peer))
        if more is not None:
            log.warning(
                "connection from %s closed at once: it already holds %d connection(s), the limit per peer "
                "(--max-per-peer)%s",
                shown(peer),
                held,
                more,
            )
        return False

    def tls_failed(self, client_address, reason: str) -> None:
        """A connection admitted by :meth:`verify` whose TLS handshake failed: it is closed, before any DICOM."""
        peer = str(client_address[0])
        with self._lock:
            self._admitted[peer] = max(0, self._admitted.get(peer, 0) - 1)
        if self.quiet:
            return
        more = self._say(("tls", peer))
        if more is not None:
            log.warning(
                "connection from %s:%s closed: TLS handshake failed: %s%s",
                shown(peer),
                client_address[1] if len(client_address) > 1 else "?",
                shown(reason, 300),
                more,
            )

    def _forget(self, key: int) -> None:
        self._live.pop(key, None)
        self._bytes.pop(key, None)

    # ------------------------------------------------------------------ events

    def handlers(self) -> list:
        from pynetdicom import evt

        return [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_FSM_TRANSITION, self._on_transition),
            (evt.EVT_DATA_RECV, self._on_data),
        ]

    def _on_open(self, event) -> None:
        peer = str(event.address[0])
        with self._lock:
            self._admitted[peer] = max(0, self._admitted.get(peer, 0) - 1)
            self._live[id(event.assoc)] = (event.assoc, peer)
            self._bytes[id(event.assoc)] = 0

    def _on_close(self, event) -> None:
        with self._lock:
            self._forget(id(event.assoc))

    def _on_transition(self, event) -> None:
        """Sta2 is "connected, waiting for the association request": anything but Evt6 there ends it."""
        if event.current_state != "Sta2" or event.fsm_event in ("Evt6", "Evt5") or self.quiet:
            return
        requestor = event.assoc.requestor
        where = f"{shown(requestor.address)}:{requestor.port}"
        if event.fsm_event == "Evt17":  # connected and closed without a byte: a port check
            log.debug("connection from %s closed by the peer without an association request", where)
            return
        more = self._say(("idle" if event.fsm_event == "Evt18" else "junk", requestor.address))
        if more is None:
            return
        if event.fsm_event == "Evt18":
            log.warning(
                "connection from %s closed: no association request within %g s (an idle connection)%s",
                where,
                self.request_timeout,
                more,
            )
        else:
            log.warning(
                "connection from %s closed: it sent something other than a DICOM association request "
                "(not DICOM traffic?)%s",
                where,
                more,
            )

    def _on_data(self, event) -> None:
        key = id(event.assoc)
        with self._lock:
            got = self._bytes.get(key, 0) + len(event.data)
            self._bytes[key] = got
        if got > self.max_instance_bytes and not getattr(event.assoc, "_sent_abort", False):
            requestor = event.assoc.requestor
            log.warning(
                "association from %s (%s) aborted: it sent more than %g MB for one object, the limit "
                "(--max-instance-mb)",
                shown(requestor.ae_title),
                shown(requestor.address),
                round(self.max_instance_bytes / 2**20, 3),
            )
            event.assoc.abort(block=False)

    def message_done(self, assoc) -> None:
        """A message was handled: the next one's bytes count from zero."""
        with self._lock:
            if id(assoc) in self._bytes:
                self._bytes[id(assoc)] = 0
