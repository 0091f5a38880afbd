"""Inference sessions: ONNX Runtime and (optional) OpenVINO, both behind ``run(outputs, feeds)``.

Why ONNX Runtime: on a CPU it runs DenseNet121 about twice as fast as eager PyTorch
(fused conv+BN+ReLU, better thread use), so the predict CLI and the app use it by
default when it is installed. OpenVINO runs the same file, in fp32 or (asked for) bf16;
``cxrdx predict`` picks among them by measurement (inference/autotune.py, inference/choose.py).
The PyTorch path itself lives in ``Predictor._forward``.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrdx.device import available_threads
from cxrdx.errors import CheckpointError

if TYPE_CHECKING:
    import onnxruntime

    from cxrdx.imaging.preprocessing import Preprocessing

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
FEATURES_NAME = "features"  # (N, F) pooled features, for the out-of-distribution score
GRAY_NAME = "gray"  # the folded graph's input (inference/fold.py): (N, 1, S, S) letterboxed gray in [0, 1]


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def make_session(
    model_source: str | os.PathLike | bytes, threads: int | None = None
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session with intra-op threads = available CPUs and no spinning.

    Spinning is off because predict decodes images in worker threads at the same time:
    busy-waiting ORT threads would steal the cores those decoders need.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = model_source if isinstance(model_source, bytes) else str(model_source)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        name = "the exported model" if isinstance(model_source, bytes) else str(model_source)
        raise CheckpointError(
            f"{name}: ONNX Runtime cannot load it ({exc}); re-export it with `cxrdx export`"
        ) from exc


def openvino_available() -> bool:
    """Installed (found, not imported: importing OpenVINO costs about a second, more on a busy machine)."""
    import importlib.util

    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


class OpenVinoSession:
    """An OpenVINO CPU model behind ONNX Runtime's ``run(outputs, feeds)``, so Predictor takes either.

    ``precision``: ``f32`` (exact, the default) or ``bf16`` (CPUs with AMX / AVX512-BF16: about
    4x ONNX Runtime fp32 here, probabilities within ~1e-3; docs/performance.md), or ``auto``
    (OpenVINO's own default, which is bf16 on such CPUs). ``cxrdx predict`` chooses bf16 only
    after the reference check (inference/reference.py).
    One infer request per thread, because the web app predicts from several threads.

    An export in the cxrdx cache keeps its compiled model beside it (``inference/compiled_cache.py``):
    opening it again skips the compile.
    """

    def __init__(
        self, model_source: str | os.PathLike | bytes, threads: int | None = None, precision: str = "f32"
    ) -> None:
        import openvino as ov

        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or available_threads(),
        }
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            from cxrdx.inference.compiled_cache import compile_model

            self.compiled = compile_model(ov.Core(), model_source, config)
        except Exception as exc:  # noqa: BLE001
            name = "the exported model" if isinstance(model_source, bytes) else str(model_source)
            raise CheckpointError(f"{name}: OpenVINO cannot load it ({exc}); use --backend onnx") from exc
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # bf16/f32
        self.backend_name = "openvino"
        self._local = threading.local()

    def run(self, output_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(dict(feeds))
        names = list(output_names) if output_names else [OUTPUT_NAME]
        return [np.array(result[self.compiled.output(name)], dtype=np.float32) for name in names]


# --------------------------------------------------------------------------- folded graphs


def channel_affine(prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(a, d), one value per channel: the network input is ``a_c * gray + d_c`` (THE normalisation)."""
    lo, hi = prep.pixel_range
    mean = np.broadcast_to(np.asarray(prep.mean, dtype=np.float64), (prep.channels,))
    std = np.broadcast_to(np.asarray(prep.std, dtype=np.float64), (prep.channels,))
    return (hi - lo) / std, (lo - mean) / std


class GrayFeed:
    """A folded graph (input ``gray``) behind the usual ``run(outputs, {"image": x})``.

    Callers keep feeding the normalised (N, C, S, S) input that ``Preprocessing`` makes and
    ``Predictor.probabilities`` takes; channel 0 is turned back into the gray image (the exact
    inverse, ~1e-7). ``{"gray": g}`` is passed through as it is.
    """

    takes_gray = True

    def __init__(self, session: Any, prep: Preprocessing) -> None:
        self.session = session
        a, d = channel_affine(prep)
        self._a0, self._d0 = np.float32(a[0]), np.float32(d[0])

    def run(self, output_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if GRAY_NAME in feeds:
            gray = feeds[GRAY_NAME]
        else:
            gray = (np.asarray(feeds[INPUT_NAME], dtype=np.float32)[:, :1] - self._d0) / self._a0
        return self.session.run(output_names, {GRAY_NAME: np.ascontiguousarray(gray, dtype=np.float32)})

    def __getattr__(self, name: str) -> Any:  # backend_name, precision, get_inputs ... of the session
        return getattr(self.session, name)


def open_session(
    model_source: str | os.PathLike | bytes,
    threads: int | None = None,
    runtime: str = "onnx",
    prep: Preprocessing | None = None,
    precision: str = "fp32",
) -> Any:
    """An ORT (or OpenVINO) session on an exported file; a folded graph comes wrapped in ``GrayFeed``.

    ``prep``: the checkpoint's preprocessing; read from the file's metadata when not given.
    ``precision``: OpenVINO's inference precision, fp32 or bf16 (ONNX Runtime runs the file as it is).
    """
    if runtime == "onnx":
        session = make_session(model_source, threads)
    else:
        session = OpenVinoSession(model_source, threads, "bf16" if precision == "bf16" else "f32")
    if runtime == "onnx":
        input_name = session.get_inputs()[0].name
    else:
        input_name = session.compiled.inputs[0].get_any_name()
    if input_name != GRAY_NAME:
        return session
    if prep is None:
        from cxrdx.imaging.preprocessing import Preprocessing

        prep = Preprocessing.from_dict(json.loads(_metadata(session, model_source)["preprocessing"]))
    return GrayFeed(session, prep)


def _metadata(session: Any, model_source: str | os.PathLike | bytes) -> dict[str, str]:
    """The file's metadata_props: from ONNX Runtime when it is the session, else read with ``onnx``."""
    if hasattr(session, "get_modelmeta"):
        return dict(session.get_modelmeta().custom_metadata_map)
    import onnx

    if isinstance(model_source, bytes):
        proto = onnx.load_from_string(model_source)
    else:
        proto = onnx.load(str(model_source), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
