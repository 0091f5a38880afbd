"""Batches overlap in the node: a batch's last results are built while the next batch goes through the network.

``Processing.stream`` leaves results in flight (in result worker processes) instead of waiting for them at
the end of each batch; the node keeps those images out of its next batch (they stay in the spool until
their results are written) and ``flush``es them when nothing else is waiting.
"""

from __future__ import annotations

import io
import time
import types
from collections import deque
from pathlib import Path

import pydicom
from conftest import free_port
from node_kit import phantom_dicom, store, wait_for

from cxrdx.interop.node import Node, NodeConfig
from cxrdx.interop.processing import Processing
from cxrdx.interop.send import Destination

BUILD_SECONDS = 0.4
NODE_BUILD_SECONDS = 1.0  # long beside storing 3 small images, even on a busy machine


def slow_results(source, prediction, **kw) -> list:
    """A results function that takes its time and leaves a mark when done (runs in a worker process)."""
    time.sleep(BUILD_SECONDS)
    Path(str(source.filename) + ".done").write_text("")
    return []


class Network:
    """A predictor without a model; it notes, as each call starts, which results were already built."""

    def __init__(self) -> None:
        self.done_at_start: list[set[str]] = []

    def iter_predict(self, paths, batch_size=8, workers=None):
        self.done_at_start.append(_done(paths))
        for _ in paths:
            yield types.SimpleNamespace(
                ok=True, error=None, in_distribution=None, probabilities={}, positive={}
            )


def _films(folder: Path, n: int) -> list[Path]:
    paths = [folder / f"img{i}.dcm" for i in range(n)]
    for i, path in enumerate(paths):
        phantom_dicom(i).save_as(path, enforce_file_format=True)
    return paths


def _done(paths) -> set[str]:
    folder = Path(paths[0]).parent
    return {p.name.removesuffix(".done") for p in folder.glob("*.done")}


def test_the_next_batch_goes_through_the_network_while_the_last_results_are_built(tmp_path):
    paths = _films(tmp_path, 6)
    network = Network()
    processing = Processing(network, slow_results, {}, batch_size=3, heatmaps=False, result_workers=1)
    try:
        processing.warm()
        first = list(processing.stream(paths[:3]))
        assert processing.in_flight, "the batch's results are still being built when stream returns"
        second = list(processing.stream(paths[3:]))
        not_built = {p.name for p in paths[:3]} - network.done_at_start[1]
        assert not_built, "the second network pass started before the first batch's results were all built"
        rest = list(processing.flush())
    finally:
        processing.close()
    outcomes = first + second + rest
    assert [p for p, _ in outcomes] == paths  # each once, in order
    assert all(out == [] for _, out in outcomes)
    assert not processing.in_flight


def test_without_stream_a_call_still_returns_every_outcome(tmp_path):
    paths = _films(tmp_path, 3)
    processing = Processing(Network(), slow_results, {}, batch_size=2, heatmaps=False, result_workers=1)
    try:
        assert [p for p, _ in processing(paths)] == paths
    finally:
        processing.close()


class Overlapping:
    """A node processor with ``stream`` and ``flush``: each result is ready NODE_BUILD_SECONDS after its batch."""

    def __init__(self) -> None:
        self.batches: list[list[Path]] = []
        self.overlapped = 0
        self._ahead: deque = deque()

    @property
    def in_flight(self) -> set[Path]:
        return {p for p, _ in self._ahead}

    def _result(self, path: Path):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
            entropy_srcs=[str(ds.SOPInstanceUID), "result"]
        )
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return path, [buf.getvalue()]

    def stream(self, batch):
        self.overlapped += bool(self._ahead)
        self.batches.append(list(batch))
        for path in batch:
            self._ahead.append((path, time.monotonic() + NODE_BUILD_SECONDS))
        while self._ahead and self._ahead[0][1] <= time.monotonic():
            yield self._result(self._ahead.popleft()[0])

    def flush(self):
        while self._ahead:
            path, ready = self._ahead.popleft()
            time.sleep(max(0.0, ready - time.monotonic()))
            yield self._result(path)

    def __call__(self, batch):
        yield from self.stream(batch)
        yield from self.flush()


def test_the_node_never_takes_an_image_whose_results_are_in_flight(tmp_path):
    from test_node import Destination_SCP

    pacs_port = free_port()
    pacs = Destination_SCP(pacs_port)
    processor = Overlapping()
    config = NodeConfig(
        port=free_port(),
        destination=Destination("PACS", "127.0.0.1", pacs_port),
        spool=tmp_path / "spool",
        backoff=(0.05, 0.2),
        batch_size=3,
        max_batch=3,
    )
    node = Node(config, processor)
    node.start()
    try:
        sent = [phantom_dicom(i) for i in range(12)]
        for k in range(0, 12, 3):
            assert store(node.address[1], sent[k : k + 3], "CXRDX") == [0, 0, 0]
            time.sleep(0.1)
        wait_for(lambda: len(pacs.received) == 12 and node.idle(), 30, "12 results at the PACS")
    finally:
        node.stop()
        pacs.stop()
    taken = [p.name for batch in processor.batches for p in batch]
    assert len(taken) == len(set(taken)) == 12, "each image went through the network once"
    assert processor.overlapped >= 1, "a batch was taken while the previous one's results were in flight"
    assert node.counts["processed"] == 12
