"""Every finding's heatmap for one image, from the cheapest source that gives Grad-CAM's maps.

1. The exported graph's ``cams`` output (``cxrdx.inference.export``; a network whose head is
   average pool + linear, ``cxrdx.explain.cam``): Grad-CAM is ReLU of those cells, so the maps
   come from the fast backend's forward pass, with no torch. ``capture_maps(predictor)`` makes
   every prediction keep its images' cells, so explaining an image just predicted costs no
   network pass at all (``cxrdx explain``, the app); otherwise one forward of the graph.
2. The PyTorch network, when there is no session (``--backend torch``), the graph predates
   ``cams`` or the session is an int8 model (heatmaps stay fp32; a bf16 session's cams are used:
   bf16 is only chosen after passing predict's check against fp32, ``cxrdx.inference.choose``): one forward pass for the same
   head (``ForwardCam``), Grad-CAM's backward pass for any other (``heatmap_maker``).

Maps are made on the (S, S) model input and returned on the source image's grid, normalised
over the image, not the letterbox padding (``cxrdx.explain.gradcam.to_source``).
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrdx.errors import CxrdxError
from cxrdx.explain.maps import GridMaps
from cxrdx.inference.backends import GRAY_NAME, INPUT_NAME, OUTPUT_NAME
from cxrdx.inference.export import CAMS_NAME
from cxrdx.labels import canonical

if TYPE_CHECKING:
    from cxrdx.imaging.letterbox import Letterbox

# A cxrdx.inference.predictor.Predictor (which imports this module on first use; not imported here) and
# what it takes as an image: a path or an array.
Predictor = Any
ImageLike = Any

# the session precisions whose cams are the network's own maps: bf16 is the precision predict admitted
# after its check against fp32 (cxrdx.inference.choose), so the maps come with the prediction's pass
SESSION_PRECISIONS = ("fp32", "bf16")
CAPTURE_KEEP = 64  # images whose cells a capturing session keeps (14 x 10 x 10 floats each at 320 px)


def _digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(row, dtype=np.float32).data, digest_size=16).digest()


def output_names(session: Any) -> list[str]:
    """The graph outputs of an ONNX Runtime or OpenVINO session (through ``GrayFeed`` / ``CamCapture``)."""
    if hasattr(session, "get_outputs"):
        return [o.name for o in session.get_outputs()]
    compiled = getattr(session, "compiled", None)
    if compiled is not None:
        return [name for out in compiled.outputs for name in out.get_names()]
    return []


class CamCapture:
    """A session that also returns ``cams`` on every run and keeps each input row's cells by digest.

    Callers see the outputs they asked for; ``take(row)`` gives the (L, h, w) cells of a row run
    recently (the last ``CAPTURE_KEEP``). Thread-safe: the app predicts from several threads.
    """

    def __init__(self, session: Any, keep: int = CAPTURE_KEEP) -> None:
        self.session = session
        self.keep = keep
        self._cells: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, output_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(output_names) if output_names else [OUTPUT_NAME]
        if CAMS_NAME in names:
            return self.session.run(names, feeds)
        out = self.session.run([*names, CAMS_NAME], feeds)
        x = feeds[GRAY_NAME] if GRAY_NAME in feeds else feeds[INPUT_NAME]
        cells = np.asarray(out[-1], dtype=np.float32)
        with self._lock:
            for row, cell in zip(x, cells, strict=True):
                self._cells[_digest(row)] = cell
            while len(self._cells) > self.keep:
                self._cells.popitem(last=False)
        return out[:-1]

    def take(self, row: np.ndarray) -> np.ndarray | None:
        with self._lock:
            return self._cells.get(_digest(row))

    def __getattr__(self, name: str) -> Any:  # takes_gray, backend_name, precision, get_inputs ...
        return getattr(self.session, name)


class Heatmaps:
    """One predictor's heatmap maker (``heatmaps(predictor)``); it keeps the last image's maps, since
    the app and ``--heatmaps`` ask for several findings of one image one after another."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._lock = threading.Lock()
        self._maker: Any = None  # the torch route's ForwardCam / GradCam, made on first use
        self._last: tuple[bytes, Any] | None = None  # (input digest, cells (L, h, w) or squares (L, S, S))

    def uses_session(self) -> bool:
        """Whether maps come from the session's ``cams`` output (else from the PyTorch network)."""
        p = self.predictor
        exact = p.precision in SESSION_PRECISIONS  # int8's cells are not the network's: torch then
        return p.session is not None and exact and CAMS_NAME in output_names(p.session)

    def capture(self) -> None:
        """Make predictions keep their cells (no-op when maps do not come from the session)."""
        p = self.predictor
        with self._lock:
            if self.uses_session() and not isinstance(p.session, CamCapture):
                p.session = CamCapture(p.session)

    def explain(self, image: ImageLike, finding: str) -> np.ndarray:
        """Grad-CAM heatmap for one finding, in [0, 1], on the source image's own pixel grid."""
        return self.maps(image, [finding])[canonical(finding)]

    def maps(self, image: ImageLike, findings: list[str]) -> dict[str, np.ndarray]:
        """``explain`` of several findings of one image (finding -> map): read and prepared once."""
        return self.squares(image, findings).to_source()  # normalised over the image, not the padding

    def squares(self, image: ImageLike, findings: list[str]) -> GridMaps:
        """The findings' maps on the model input (``GridMaps``; ``.to_source()`` gives ``maps``)."""
        from cxrdx.explain.maps import cam_squares

        p = self.predictor
        names = [canonical(f) for f in findings]
        for finding in names:
            if finding not in p.labels:
                raise CxrdxError(f"this model does not output {finding}; it outputs {', '.join(p.labels)}")
        out: dict[str, np.ndarray] = {}
        box = None
        with self._lock:
            if self.uses_session() and names:
                cells, box, size = self._session_cells(image)
                for finding in names:
                    index = p.labels.index(finding)
                    out[finding] = cam_squares(cells[None, index : index + 1], size)[0, 0]
                return GridMaps(out, box)
            if names and not (
                isinstance(image, np.ndarray) and image.dtype == np.float32 and image.ndim == 2
            ):
                image, _ = p.read(image)  # once for all findings
            for finding in names:
                out[finding], box = self._from_network(image, p.labels.index(finding))
        return GridMaps(out, box)

    def _session_cells(self, image: ImageLike) -> tuple[np.ndarray, Letterbox, tuple[int, int]]:
        """(cells (L, h, w), letterbox, model input size) of one image, from a captured prediction or a pass."""
        p = self.predictor
        # the input exactly as Predictor.iter_predict makes it, so a captured prediction's row matches
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 2):
            image, _ = p.read(image, uint8_ok=True)
        gray = bool(getattr(p.session, "takes_gray", False))
        prep = p.meta.preprocessing
        views, box = prep.gray_views(image) if gray else prep.views(image)
        row = np.ascontiguousarray(views[0], dtype=np.float32)  # ten-crop: the centre crop
        digest = b"session" + _digest(row)
        if self._last is None or self._last[0] != digest:
            cells = p.session.take(row) if isinstance(p.session, CamCapture) else None
            if cells is None:
                cells = p.session.run([CAMS_NAME], {GRAY_NAME if gray else INPUT_NAME: row[None]})[0][0]
            self._last = (digest, np.asarray(cells, dtype=np.float32))
        return self._last[1], box, row.shape[-2:]

    def _from_network(self, image: ImageLike, index: int) -> tuple[np.ndarray, Letterbox]:
        import torch

        from cxrdx.explain.cam import heatmap_maker

        p = self.predictor
        if not isinstance(image, np.ndarray) or image.dtype != np.float32 or image.ndim != 2:
            image, _ = p.read(image)
        x, box = p.prepare(image)
        if self._maker is None:
            # The maker's hooks sit on the network it wraps; with the torch backend other threads
            # run that network, so it gets a private copy.
            self._maker = heatmap_maker(p.model if p.session is not None else copy.deepcopy(p.model))
        digest = b"network" + _digest(x)
        if self._last is None or self._last[0] != digest:
            batch = torch.from_numpy(x[None]).to(p.device)
            self._last = (digest, self._maker.many(batch, range(len(p.labels)))[:, 0])
        return self._last[1][index], box


def heatmaps(predictor: Predictor) -> Heatmaps:
    """The predictor's ``Heatmaps``, made once (``Predictor.explain`` goes through it)."""
    with predictor._explain_lock:
        if predictor._heatmaps is None:
            predictor._heatmaps = Heatmaps(predictor)
    return predictor._heatmaps


def capture_maps(predictor: Predictor) -> None:
    """From now on every prediction keeps its images' class activation maps, so ``explain`` of an
    image just predicted needs no network pass (where the maps come from the session). Anything
    else that explains (a stand-in in a test, a wrapper) is left as it is."""
    if hasattr(predictor, "_explain_lock") and hasattr(predictor, "session"):  # a cxrdx Predictor
        heatmaps(predictor).capture()
