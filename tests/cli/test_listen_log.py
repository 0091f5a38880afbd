"""`cxrdx listen`'s log lines go to the stderr of the moment, once, however often listen runs in one process."""

from __future__ import annotations

import argparse
import io
import logging
import sys

from cxrdx.cli import listen


def test_a_second_run_in_one_process_logs_once_to_its_own_stderr(monkeypatch):
    node_log = logging.getLogger("cxrdx.node")
    monkeypatch.setattr(node_log, "handlers", [])  # leave the process's logging as it was
    monkeypatch.setattr(node_log, "propagate", node_log.propagate)
    monkeypatch.setattr(node_log, "level", node_log.level)
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    listen.reporter(argparse.Namespace(verbose=False))
    first.close()  # the first run's stream is gone (as a test's capture is after the test)
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    listen.reporter(argparse.Namespace(verbose=False))
    node_log.warning("destination unavailable")
    text = second.getvalue()
    assert text.count("destination unavailable") == 1, text
    assert "Logging error" not in text and "Traceback" not in text
