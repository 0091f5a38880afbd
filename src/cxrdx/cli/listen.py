"""``cxrdx listen``: a DICOM node (the job ``cxrdx.jobs.listen``); logs on stderr, counts when stopped."""

from __future__ import annotations

import argparse
import logging
import sys

from cxrdx.cli.console import ConsoleReporter
from cxrdx.jobs import listen as JOB

DESCRIPTION = (
    "Run a DICOM Storage SCP: C-ECHO, and C-STORE of CR / DX / DX-for-presentation images, which are "
    "read by the model; the results (SR + heatmap SEG, same study; --secondary-capture adds pictures) go to "
    "--send-to by C-STORE, "
    "or by STOW-RS to a DICOMweb URL. Other objects (other modalities, SR, laterals unless "
    "--allow-lateral) are acknowledged and logged, not processed. No worklist; DICOM TLS with --tls-*, "
    "else no authentication beyond AE titles: use it on a trusted network."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true", help="log every received instance")


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged, not as it was at set-up (a stream
    closed since, e.g. by an earlier in-process run, would turn every later line into a logging error)."""

    stream = property(lambda self: sys.stderr, lambda self, value: None)


def reporter(args: argparse.Namespace) -> ConsoleReporter:
    """The node logs through ``logging`` (cxrdx.node): shown on stderr, every instance with --verbose."""
    node_log = logging.getLogger("cxrdx.node")
    for old in [h for h in node_log.handlers if isinstance(h, StderrHandler)]:
        node_log.removeHandler(old)  # one per process, however often listen runs in it
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s cxrdx listen: %(levelname)s %(message)s"))
    node_log.addHandler(handler)
    node_log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    node_log.propagate = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if args.verbose else logging.ERROR)
    return ConsoleReporter("listen")


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    c, left = result.counts, result.spool
    print(
        f"cxrdx listen: stopped; {c['processed']} processed, {c['ignored']} not for us, {c['refused']} refused, "
        f"{c['failed']} failed; {left['inbox']} waiting and {left['outbox']} unsent in the spool",
        file=sys.stderr,
    )
    return 0
