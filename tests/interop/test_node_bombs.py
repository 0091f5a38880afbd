"""A codestream bomb sent to `cxrdx listen` over DICOM (issue 28, item 2, on the node).

A 2 KB JPEG Baseline instance whose DICOM header says 64x64 while its JPEG SOF says
20000x20000 cost the node +1.95 GB when the decoder trusted the SOF. Sent by a pynetdicom
modality to a real `cxrdx listen` subprocess, it must be failed from the frame header (the
log names the problem), no process of the node may grow past a few hundred MB, and the node
must go on to deliver a good image's results to the destination (a pynetdicom Storage SCP).
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from conftest import free_port
from corpus.codestream_bombs import dicom_with_frame, gray_jpeg, jpeg_with_size
from node_kit import Listener, phantom_dicom, store, tiny_checkpoint, wait_for
from pydicom.uid import JPEGBaseline8Bit, generate_uid

pytestmark = pytest.mark.slow
MAX_RSS_MB = 900  # a worker with torch and the tiny model: ~ 400 MB; the bomb took 2 GB more


class Destination:
    def __init__(self, port: int) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list = []
        ae = AE(ae_title="PACS")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        self.received.append(event.dataset)
        return 0


def _peak_rss_mb(pids: list[int]) -> float:
    """The largest VmHWM (peak resident set) among ``pids``, in MB."""
    peak = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
    return peak


def test_a_jpeg_sof_bomb_is_failed_from_its_header_and_the_node_goes_on(tmp_path):
    bomb_path = tmp_path / "bomb.dcm"
    dicom_with_frame(bomb_path, jpeg_with_size(gray_jpeg(), 20_000, 20_000), JPEGBaseline8Bit)
    bomb = pydicom.dcmread(bomb_path)
    bomb.StudyInstanceUID, bomb.SeriesInstanceUID = generate_uid(), generate_uid()
    dest_port = free_port()
    dest = Destination(dest_port)
    node = Listener(
        tiny_checkpoint(tmp_path / "tiny.safetensors"), f"PACS@127.0.0.1:{dest_port}", tmp_path / "spool"
    )
    try:
        assert store(node.port, [bomb], "CXRDX") == [0]
        peak, deadline = 0.0, time.monotonic() + 120
        while bomb.SOPInstanceUID not in node.text() or "not processed" not in node.text():
            peak = max(peak, _peak_rss_mb([node.proc.pid, *node.children()]))
            assert time.monotonic() < deadline, node.text()[-2000:]
            time.sleep(0.1)
        peak = max(peak, _peak_rss_mb([node.proc.pid, *node.children()]))
        line = next(x for x in node.text().splitlines() if bomb.SOPInstanceUID in x and "not processed" in x)
        assert peak < MAX_RSS_MB, f"a node process peaked at {peak:.0f} MB"
        print(f"node peak RSS with the 20000x20000 SOF bomb: {peak:.0f} MB")
        assert "frame header declares 20000x20000" in line, line
        good = phantom_dicom(1)
        assert store(node.port, [good], "CXRDX") == [0]
        wait_for(lambda: len(dest.received) >= 2, 120, "the good image's results at the destination")
        assert node.proc.poll() is None
    finally:
        node.stop()
        dest.server.shutdown()
