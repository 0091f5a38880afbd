"""The DICOM node against a failing spool and idle sockets (issue 28 items 3 and 4): before/after figures.

In-process node with a model-free processor (each image's "result" is a copy of it under a
derived UID), a pynetdicom Storage SCP as the PACS, everything on loopback and bounded in
time. Runs against whatever ``cxrdx`` is importable, so the same script measures an older
checkout (``PYTHONPATH=OLD/src``). Defaults are the node's own (backoff 0.5 s doubling to 30 s).

- ``readonly``: 24 results delivered while deleting from the outbox fails (as on a spool
  remounted read-only); counts what the PACS receives in ``--seconds``, then the status a new
  C-STORE gets.
- ``full``: writing results fails with ENOSPC; counts how often the one image is run through
  the processor (inference) in ``--seconds``, and the status a new C-STORE gets meanwhile.
- ``idle``: an attacker keeps 16 idle TCP connections open (re-opening any the node closes)
  from ``--attacker`` while a modality at 127.0.0.1 sends 36 C-ECHOs, one every 0.5 s.
- ``tls-silent``: a DICOM TLS node, one connection that sends nothing, 12 TLS C-ECHOs from a
  modality (``--accept-loop-handshake``: pynetdicom's own handshake, for comparison).
- ``big``: one ``--big-mb`` MB uncompressed instance C-STOREd to a node in its own process;
  the status it gets and the node's peak RSS above its resting RSS.

    python benchmarks/node_hostile.py [--scenario readonly|full|idle|big|all] [--seconds 10] [--big-mb 300]
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))
from common import machine_line  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def results(paths):
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        uid = pydicom.uid.generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "result"])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        yield path, [buf.getvalue()]


class Pacs:
    def __init__(self, port: int | None = None) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received = 0
        ae = AE(ae_title="PACS")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        self.port = port or free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        self.received += 1
        return 0


def make_node(spool: Path, pacs: Pacs, processor=results):
    from cxrdx.interop.node import Node, NodeConfig
    from cxrdx.interop.send import Destination

    node = Node(
        NodeConfig(port=free_port(), destination=Destination("PACS", "127.0.0.1", pacs.port), spool=spool),
        processor,
    )
    node.start()
    return node


def readonly(seconds: float, folder: Path) -> str:
    from node_kit import phantom_dicom, store, wait_for

    from cxrdx.interop import spool as spool_module

    real = shutil.rmtree

    def rmtree(path, ignore_errors=False, **kw):
        if "outbox" in str(path):
            if ignore_errors:
                return None
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, ignore_errors=ignore_errors, **kw)

    pacs_port = free_port()
    pacs = Pacs.__new__(Pacs)
    node = make_node(folder / "spool", type("P", (), {"port": pacs_port})())  # the PACS is down at first
    try:
        store(node.address[1], [phantom_dicom(i) for i in range(24)], "CXRDX")
        wait_for(lambda: node.spool.counts()["outbox"] == 24, 60, "24 results in the outbox")
        spool_module.shutil.rmtree = rmtree  # now the spool goes read-only, and the PACS comes up
        Pacs.__init__(pacs, port=pacs_port)
        time.sleep(seconds)
        status = store(node.address[1], [phantom_dicom(100)], "CXRDX")[0]
    finally:
        node.stop()
        pacs.server.shutdown()
        spool_module.shutil.rmtree = real
    return (
        f"readonly: 24 results in the outbox, then outbox deletes fail: the PACS received {pacs.received} "
        f"objects in {seconds:g} s; a new C-STORE meanwhile got 0x{status:04X}"
    )


def full(seconds: float, folder: Path) -> str:
    from node_kit import phantom_dicom, store

    runs: list[str] = []

    def counting(paths):
        runs.extend(p.stem for p in paths)
        yield from results(paths)

    pacs = Pacs()
    node = make_node(folder / "spool", pacs, counting)

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    node.spool.put_results = no_space
    try:
        store(node.address[1], [phantom_dicom(0)], "CXRDX")
        time.sleep(seconds)
        status = store(node.address[1], [phantom_dicom(1)], "CXRDX")[0]
    finally:
        node.stop()
        pacs.server.shutdown()
    return (
        f"full: results cannot be written: 1 image run through the processor {len(runs)} time(s) in "
        f"{seconds:g} s; a new C-STORE meanwhile got 0x{status:04X}"
    )


def idle(attacker: str, folder: Path) -> str:
    from node_kit import echo

    pacs = Pacs()
    node = make_node(folder / "spool", pacs)
    port = node.address[1]
    stop = threading.Event()
    opened = [0]

    def hold() -> None:  # keep 16 idle connections open, re-opening any that the node closes
        socks: list[socket.socket] = []
        while not stop.is_set():
            alive = []
            for s in socks:
                s.setblocking(False)
                try:
                    gone = s.recv(1) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                (s.close() if gone else alive.append(s))
            socks = alive
            while len(socks) < 16:
                s = socket.socket()
                s.bind((attacker, 0))
                try:
                    s.connect(("127.0.0.1", port))
                except OSError:
                    s.close()
                    break
                socks.append(s)
                opened[0] += 1
            stop.wait(0.2)
        for s in socks:
            s.close()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    time.sleep(1.0)
    start = time.monotonic()
    ok = 0
    for _ in range(36):
        ok += echo(port)
        time.sleep(0.5)
    took = time.monotonic() - start
    stop.set()
    t.join()
    node.stop()
    pacs.server.shutdown()
    return (
        f"idle: 16 idle connections held from {attacker} ({opened[0]} opened in all): {ok} of 36 C-ECHOs "
        f"from 127.0.0.1 answered in {took:.0f} s"
    )


def tls_silent(folder: Path, accept_loop_handshake: bool = False) -> str:
    """A DICOM TLS node; one connection that connects and sends nothing, while a modality sends 12 TLS C-ECHOs.

    ``accept_loop_handshake``: pynetdicom's own way (the handshake in the accepting thread), for comparison.
    """
    import cxrdx.interop.node as node_module

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from node_kit import echo
    from tls_kit import make_pki

    from cxrdx.interop.node import Node, NodeConfig
    from cxrdx.interop.send import Destination
    from cxrdx.interop.tls import TlsFiles

    pki = make_pki(folder / "pki")
    if accept_loop_handshake:
        node_module.handshake_in_the_connection_thread = lambda *a: None
    node = Node(
        NodeConfig(
            port=free_port(),
            destination=Destination("PACS", "127.0.0.1", Pacs().port),
            spool=folder / "spool",
            tls=TlsFiles(pki.node.cert, pki.node.key, pki.ca),
        ),
        results,
    )
    node.start()
    ok, start = 0, time.monotonic()
    with socket.create_connection(node.address):  # silent
        for _ in range(12):
            ok += echo(node.address[1], tls_args=pki.modality.client_args())  # 5 s limit each
            time.sleep(0.5)
    took = time.monotonic() - start
    node.stop()
    how = "pynetdicom's handshake in the accept loop" if accept_loop_handshake else "the node's"
    return f"tls-silent ({how}): {ok} of 12 TLS C-ECHOs answered in {took:.0f} s beside one silent connection"


def child_node(spool: str) -> None:
    """The node alone in this process: prints its port and resting RSS, then its peak RSS at stdin's end."""
    import logging
    import resource

    logging.getLogger("cxrdx.node").setLevel(logging.CRITICAL)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    pacs = Pacs()
    node = make_node(Path(spool), pacs)
    rest = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    print(node.address[1], rest, flush=True)
    sys.stdin.read()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10, flush=True)
    node.stop()


def big(megabytes: int, folder: Path) -> str:
    import subprocess

    import numpy as np
    from node_kit import phantom_dicom, store

    child = subprocess.Popen(
        [sys.executable, __file__, "--child-node", str(folder / "spool")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    port, rest = (int(v) for v in child.stdout.readline().split())
    side = int((megabytes * 2**20 / 2) ** 0.5)
    ds = phantom_dicom(0)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelData = np.zeros((side, side), np.uint16).tobytes()
    size = len(ds.PixelData) >> 20
    start = time.monotonic()
    status = store(port, [ds], "CXRDX")[0]
    took = time.monotonic() - start
    del ds
    peak = int(child.communicate("", timeout=120)[0].split()[0])
    shown = "no answer (association aborted)" if status is None else f"0x{status:04X}"
    return (
        f"big: one {size} MB instance ({side} x {side}, 16 bit): {shown} after {took:.1f} s; node peak RSS "
        f"{peak} MB, {peak - rest:+d} MB over its resting {rest} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--scenario", choices=("readonly", "full", "idle", "big", "tls-silent", "all"), default="all"
    )
    ap.add_argument(
        "--accept-loop-handshake",
        action="store_true",
        help="tls-silent: pynetdicom's own handshake, to compare",
    )
    ap.add_argument("--big-mb", type=int, default=300)
    ap.add_argument("--child-node", metavar="SPOOL", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--attacker", default="127.0.0.2", help="the idle connections' source address")
    args = ap.parse_args()
    if args.child_node:
        return child_node(args.child_node)
    import logging

    logging.getLogger("cxrdx.node").setLevel(logging.CRITICAL)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    import cxrdx

    print(machine_line())
    print(f"cxrdx from {Path(cxrdx.__file__).parent}")
    with tempfile.TemporaryDirectory() as tmp:
        every = ("readonly", "full", "idle", "big", "tls-silent")
        for name in every if args.scenario == "all" else (args.scenario,):
            folder = Path(tmp) / name
            folder.mkdir()
            if name == "idle":
                print(idle(args.attacker, folder), flush=True)
            elif name == "big":
                print(big(args.big_mb, folder), flush=True)
            elif name == "tls-silent":
                print(tls_silent(folder, args.accept_loop_handshake), flush=True)
            else:
                print({"readonly": readonly, "full": full}[name](args.seconds, folder), flush=True)


if __name__ == "__main__":
    main()
