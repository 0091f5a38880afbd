"""What the DICOM node does with received images: inference, Grad-CAM, the result objects as bytes.

:class:`Processing` turns a list of spooled DICOM files into, for each file, either the
encoded result objects (``cxrdx.interop.sr.results_for``: the SR, the heatmap SEG, and with
``secondary_capture`` the secondary captures) or the reason it could not be processed.
Images are decoded ahead in threads and run through the network in batches exactly as
``cxrdx predict`` does (``Predictor.iter_predict``), so the node keeps ``predict``'s throughput. Grad-CAM maps are computed only for the findings
the SEG holds (``segmentation.heatmap_findings``: the positive ones plus the top three; none for
an out-of-distribution image, whose SR says "not evaluated", unless the algorithm record says to
send its findings).

Building the objects (the SR, the SEG's compressed frames, the pictures, encoding) costs about
as much as a mid-sized network's inference (``benchmarks/result_objects_cost.py``). With ``result_workers`` > 0 it runs in
that many worker processes (spawned, so they share nothing with the network's threads),
while this process goes on with the next images: inference and result building overlap, also
across the node's batches (``stream`` leaves the last results of a batch in flight, ``flush`` waits
for them; the node keeps their images out of its next batch).
"""

from __future__ import annotations

import io
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("cxrdx.node")

# (source dataset, prediction, *, overlays, algorithm, image) -> result datasets
ResultsFn = Callable[..., list]


def encode(ds: Any) -> bytes:
    """A pydicom Dataset -> DICOM Part 10 bytes (preamble, file meta, data set)."""
    from pydicom.filewriter import dcmwrite

    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def make_results(
    results_fn: ResultsFn,
    path: str,
    prediction: Any,
    overlays: Any,
    image: Any,
    algorithm: dict,
    *,
    segmentation: bool = True,
    secondary_capture: bool = False,
) -> list[bytes]:
    """Read the source, build its result objects, encode them (here or in a worker process).
    ``overlays``: finding -> map on the source grid, or ``GridMaps`` (taken to the source grid here)."""
    import pydicom

    from cxrdx.explain.maps import GridMaps

    if isinstance(overlays, GridMaps):
        overlays = overlays.to_source()

    # the pixels are only needed to draw pictures on when the caller did not pass the decoded image
    pixels = secondary_capture and bool(overlays) and image is None
    source = pydicom.dcmread(path, stop_before_pixels=not pixels)
    datasets = results_fn(
        source,
        prediction,
        overlays=overlays,
        algorithm=algorithm,
        image=image if secondary_capture else None,
        segmentation=segmentation,
        secondary_capture=secondary_capture,
    )
    return [encode(ds) for ds in datasets]


def portable(prediction: Any) -> Any:
    """The prediction's fields as a plain namespace: a worker process unpickles it without loading torch."""
    import dataclasses
    import types

    if dataclasses.is_dataclass(prediction):
        fields = dataclasses.asdict(prediction)
        return types.SimpleNamespace(**fields, source=fields.get("image"))  # `source`: image's former name
    return prediction


def _watch_parent(parent: int) -> None:
    """End this worker when the node is gone (killed with SIGKILL, nobody shuts the pool down)."""
    import time

    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _worker_init(parent: int | None = None) -> None:
    import threading

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    import cxrdx.interop.sr  # noqa: F401 - load highdicom once, before the first image
    import cxrdx.interop.sr_template  # noqa: F401


def _warm() -> None:
    pass


class Processing:
    """Spooled files -> results, with a Predictor and a results function."""

    def __init__(
        self,
        predictor: Any,
        results_fn: ResultsFn,
        algorithm: dict[str, Any],
        *,
        batch_size: int = 8,
        workers: int | None = None,
        heatmaps: bool = True,
        result_workers: int = 0,
        secondary_capture: bool = False,
    ) -> None:
        """``heatmaps``: Grad-CAM maps and their SEG (else the SR only); ``secondary_capture``: also the
        pictures (``secondary_capture.secondary_captures``)."""
        self.predictor = predictor
        self.results_fn = results_fn
        self.algorithm = algorithm
        self.batch_size = batch_size
        self.workers = workers
        self.heatmaps = heatmaps
        self.result_workers = result_workers
        self.secondary_capture = secondary_capture and heatmaps
        self._pool: ProcessPoolExecutor | None = None
        self._ahead: deque[tuple[Path, Future | list[bytes] | str]] = deque()  # started, in order

    def _executor(self) -> ProcessPoolExecutor | None:
        if self.result_workers > 0 and self._pool is None:
            import multiprocessing

            self._pool = ProcessPoolExecutor(
                self.result_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(os.getpid(),),
            )
        return self._pool

    def warm(self) -> None:
        """Start the result workers now (they load highdicom), not on the first image."""
        pool = self._executor()
        if pool is not None:
            for f in [pool.submit(_warm) for _ in range(self.result_workers)]:
                f.result()

    def close(self) -> None:
        self._ahead.clear()  # the spool still holds their images
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def overlays(self, path: Path, prediction: Any) -> tuple[Any, Any]:
        """Grad-CAM maps of the SEG's findings, and the image read: a cxrdx Predictor's on the model input
        (``GridMaps``, the worker takes them to the source grid: 1/10-1/20 of the bytes to hand over and of
        this process's work), anything else's as ``explain`` gives them ([0, 1], source pixel grid)."""
        from cxrdx.interop.segmentation import heatmap_findings

        names = heatmap_findings(prediction, self.algorithm) if self.heatmaps else []
        if not names:
            return {}, None
        # read as Predictor.iter_predict reads it (8-bit stays uint8), so the maps are the ones the
        # prediction's own pass captured (``capture_maps``): no second network pass
        image, _ = self.predictor.read(str(path), uint8_ok=True)
        if hasattr(self.predictor, "_explain_lock"):  # a cxrdx Predictor: all findings from one preparation
            from cxrdx.inference.heatmaps import heatmaps

            maps = heatmaps(self.predictor).squares(image, names)
        else:
            maps = {name: self.predictor.explain(image, name) for name in names}
        if image.dtype == np.uint8 and self.secondary_capture:  # the pictures take [0, 1] floats
            image = image.astype(np.float32) / np.float32(255)
        return maps, image

    def _start(self, path: Path, prediction: Any) -> Future | list[bytes] | str:
        """Begin one predicted file's results: a Future (in a worker), the results, or why there are none."""
        if not prediction.ok:
            return str(prediction.error)
        if prediction.in_distribution is False:  # the SR says "not evaluated"; no heatmaps (study.withheld)
            sent = self.algorithm.get("ood_findings") == "send"
            log.warning(
                "%s: OUT OF DISTRIBUTION (OOD score %.2f, threshold %s): %s",
                path.name,
                prediction.ood_score if prediction.ood_score is not None else float("nan"),
                self.algorithm.get("ood_threshold", "?"),
                "findings sent anyway, marked (--send-ood-findings)"
                if sent
                else "no findings reported, no heatmaps",
            )
        try:
            overlays, image = self.overlays(path, prediction)
            image = image if self.secondary_capture else None  # only pictures need it (not sent to workers)
            pool = self._executor()
            options = {"segmentation": self.heatmaps, "secondary_capture": self.secondary_capture}
            if pool is None:
                return make_results(
                    self.results_fn, str(path), prediction, overlays, image, self.algorithm, **options
                )
            args = (self.results_fn, str(path), portable(prediction), overlays, image, self.algorithm)
            return pool.submit(make_results, *args, **options)
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - one odd instance must not stop the node
            log.exception("%s: results could not be made", path.name)
            return f"results could not be made ({type(exc).__name__}: {exc})"

    def _finish(self, path: Path, pending: Future | list[bytes] | str) -> list[bytes] | str:
        if not isinstance(pending, Future):
            return pending
        try:
            return pending.result()
        except BrokenProcessPool:
            self.close()  # a worker died: a new pool next time; the spool still holds the images
            raise
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.error("%s: results could not be made (%s: %s)", path.name, type(exc).__name__, exc)
            return f"results could not be made ({type(exc).__name__}: {exc})"

    def one(self, path: Path, prediction: Any) -> list[bytes] | str:
        """The encoded results for one predicted file, or why there are none."""
        return self._finish(path, self._start(path, prediction))

    @property
    def in_flight(self) -> set[Path]:
        """Files whose results are being built (``stream`` left them in flight; ``flush`` finishes them)."""
        return {path for path, _ in self._ahead}

    def __call__(self, paths: Sequence[Path]) -> Iterator[tuple[Path, list[bytes] | str]]:
        """Every file's outcome (and any still in flight from an earlier ``stream``), in order."""
        yield from self.stream(paths)
        yield from self.flush()

    def stream(self, paths: Sequence[Path]) -> Iterator[tuple[Path, list[bytes] | str]]:
        """The outcomes that are ready, in order, as the files go through the network; up to about a network
        batch and two per result worker are left in flight at the end, so that the next call's network
        pass overlaps their building (``flush`` waits for them)."""
        predictions = self.predictor.iter_predict(
            [str(p) for p in paths], batch_size=self.batch_size, workers=self.workers
        )
        # results in flight while the network goes on: a whole network batch, so the network does not wait
        limit = self.batch_size + 2 * max(1, self.result_workers) if self.result_workers > 0 else 0
        for path, prediction in zip(paths, predictions, strict=True):
            self._ahead.append((path, self._start(path, prediction)))
            yield from self._ready(limit)
        yield from self._ready(limit)

    def flush(self) -> Iterator[tuple[Path, list[bytes] | str]]:
        """The outcomes still in flight, waiting for each."""
        yield from self._ready(0, wait=True)

    def _ready(self, limit: int, wait: bool = False) -> Iterator[tuple[Path, list[bytes] | str]]:
        ahead = self._ahead
        while ahead and (
            wait or len(ahead) > limit or not isinstance(ahead[0][1], Future) or ahead[0][1].done()
        ):
            done_path, pending = ahead.popleft()
            yield done_path, self._finish(done_path, pending)
