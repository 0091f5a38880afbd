"""``cxrdx export``: a checkpoint as a self-describing ONNX file, and the ONNX Runtime session.

Why ONNX: on a CPU, ONNX Runtime runs DenseNet121 about twice as fast as eager
PyTorch (fused conv+BN+ReLU, better thread use), so the predict CLI and the app use
it by default when it is installed. The exported graph outputs *probabilities*
(sigmoid applied inside), has a dynamic batch axis and a fixed square input of the
checkpoint's size, and carries in its ``metadata_props`` everything needed to use it
without cxrdx: label order, size, the preprocessing (normalisation) record,
thresholds and the sha256 of the checkpoint it came from.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrdx.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import onnxruntime
    import torch

    from cxrdx.model import CheckpointMeta

DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
EXPORT_TOLERANCE = 1e-4
CACHE_KEEP = 8  # ONNX exports kept in the cache folder


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how closely ONNX Runtime reproduced PyTorch."""

    path: Path
    source_sha256: str
    size: int
    max_abs_diff: float | None  # over the probe inputs; None when the check was skipped


def available_threads() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_metadata(meta: CheckpointMeta, source_sha256: str) -> dict[str, str]:
    """The key/value strings embedded in the ONNX file (all JSON or plain text)."""
    from cxrdx import __version__

    return {
        "cxrdx_version": __version__,
        "architecture": meta.architecture,
        "labels": json.dumps(list(meta.labels)),
        "size": str(meta.preprocessing.size),
        "preprocessing": json.dumps(meta.preprocessing.to_dict(), sort_keys=True),
        "thresholds": json.dumps(meta.thresholds),
        "output": "sigmoid probabilities, one column per entry of 'labels'",
        "input": (
            "float32 (N, C, size, size): the [0, 1] gray image letterboxed to size, then "
            "(pixel_lo + x * (pixel_hi - pixel_lo) - mean) / std per 'preprocessing'"
        ),
        "source_sha256": source_sha256,
        "checkpoint_meta": meta.to_json(),
    }


def _with_sigmoid(model: torch.nn.Module) -> torch.nn.Module:
    import torch

    class _Probabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.net(x))

    return _Probabilities(model).eval()


def onnx_bytes(
    model: torch.nn.Module, meta: CheckpointMeta, source_sha256: str, opset: int = DEFAULT_OPSET
) -> bytes:
    """Serialise the network (probabilities out, dynamic batch) with metadata, in memory."""
    import onnx
    import torch

    size, channels = meta.preprocessing.size, meta.preprocessing.channels
    wrapped = _with_sigmoid(model)
    was_training = model.training
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript (not a dependency); it is exact for this plain CNN.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (
                    torch.zeros(
                        1, channels, size, size, dtype=torch.float32, device=next(model.parameters()).device
                    ),
                ),
                buf,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
    except Exception as exc:  # noqa: BLE001 - an exporter failure is reported, not a traceback
        raise CheckpointError(
            f"could not export the {meta.architecture} network to ONNX ({type(exc).__name__}: {exc}); "
            "use --backend torch"
        ) from exc
    finally:
        model.train(was_training)  # the exporter restores the *wrapper's* mode onto the network
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in onnx_metadata(meta, source_sha256).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "cxrdx chest X-ray findings model; see metadata_props"
    return proto.SerializeToString()


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
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoSession:
    """An OpenVINO CPU model behind ONNX Runtime's ``run(outputs, feeds)``, so Predictor takes either.

    Optional (``pip install openvino``), opt-in with ``--backend openvino``. On CPUs with
    native bf16 (AMX / AVX512-BF16) OpenVINO runs in bf16 unless ``precision="f32"``:
    about 2.7x ONNX Runtime fp32 per CPU-second here, with probabilities within ~1e-3
    of fp32 (see docs/performance.md). ``auto`` never picks it: fp32 stays the default.
    One infer request per thread, because the web app predicts from several threads.
    """

    def __init__(
        self, model_source: str | os.PathLike | bytes, threads: int | None = None, precision: str = "auto"
    ) -> None:
        import openvino as ov

        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or available_threads(),
        }
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        source = model_source if isinstance(model_source, bytes) else str(model_source)
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(source), "CPU", config)
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
        result = request.infer({INPUT_NAME: feeds[INPUT_NAME]})
        return [np.array(result[self.compiled.output(OUTPUT_NAME)], dtype=np.float32)]


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The cxrdx metadata_props of an exported file (for users and tests)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def compare_backends(
    model: torch.nn.Module, session: onnxruntime.InferenceSession, inputs: np.ndarray
) -> float:
    """Largest |ONNX - PyTorch| probability difference on (N, C, S, S) inputs."""
    import torch

    x = np.ascontiguousarray(inputs, dtype=np.float32)
    with torch.inference_mode():
        ref = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    return float(np.abs(ref - got).max())


def _probe_inputs(meta: CheckpointMeta, n: int = 2, seed: int = 0) -> np.ndarray:
    """Smooth random images (not noise: closer to what the network sees), preprocessed."""
    rng = np.random.default_rng(seed)
    s = meta.preprocessing.size
    low = rng.random((n, max(2, s // 16), max(2, s // 16))).astype(np.float32)
    from cxrdx.preprocess import resize_float

    images = [resize_float(im, s, s) for im in low]
    return np.concatenate([meta.preprocessing(im)[0][None] for im in images])


def export_onnx(
    ckpt: str | os.PathLike, out: str | os.PathLike, opset: int = DEFAULT_OPSET, check: bool = True
) -> ExportReport:
    """Write ``out`` (.onnx) from a cxrdx checkpoint and, when ``check``, verify it against PyTorch."""
    from cxrdx.model import atomic_write, file_sha256, load_checkpoint

    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--onnx {out}: the output file name must end in .onnx")
    if out.is_dir():
        raise ConfigError(f"--onnx {out}: is a folder; give a file name such as {out / 'model.onnx'}")
    model, meta = load_checkpoint(ckpt)
    sha = file_sha256(ckpt)
    data = onnx_bytes(model, meta, sha, opset)
    diff = None
    if check and onnxruntime_available():
        diff = compare_backends(model, make_session(data), _probe_inputs(meta))
        if not diff <= EXPORT_TOLERANCE:
            raise CheckpointError(
                f"{ckpt}: the ONNX export differs from PyTorch by {diff:.2e} (> {EXPORT_TOLERANCE:g}); "
                "not written. Use the torch backend and report this"
            )

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    atomic_write(out, write)
    return ExportReport(out, sha, meta.preprocessing.size, diff)


# --------------------------------------------------------------------------- cached export for Predictor


def cache_dir() -> Path:
    """Where Predictor keeps ONNX exports of checkpoints: $CXRDX_CACHE_DIR or ~/.cache/cxrdx."""
    root = (
        os.environ.get("CXRDX_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxrdx"
    )
    return Path(root) / "onnx"


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently used exports (DenseNet121 is 28 MB each)."""
    entries = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        old.unlink(missing_ok=True)


def cached_session(
    ckpt: str | os.PathLike,
    model: torch.nn.Module,
    meta: CheckpointMeta,
    threads: int | None = None,
    runtime: str = "onnx",
) -> onnxruntime.InferenceSession | OpenVinoSession:
    """An ORT session for a checkpoint, exporting it once per (checkpoint sha, opset, torch version).

    The cache key is the file's sha256, so an edited or retrained checkpoint is re-exported.
    When the cache folder is not writable the export is kept in memory only.
    ``runtime="openvino"`` runs the same file with OpenVINO instead of ONNX Runtime.
    """
    make = make_session if runtime == "onnx" else OpenVinoSession
    import torch

    from cxrdx.model import atomic_write, file_sha256

    sha = file_sha256(ckpt)
    name = f"{sha[:24]}-opset{DEFAULT_OPSET}-torch{torch.__version__.split('+')[0]}.onnx"
    path = cache_dir() / name
    if path.is_file():
        try:
            session = make(path, threads)
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used: pruned last
            return session
        except CheckpointError:
            pass  # a damaged cache entry: export again below
    data = onnx_bytes(model, meta, sha)
    with contextlib.suppress(OSError):  # read-only cache folder: keep the export in memory only
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        _prune(path.parent, keep=CACHE_KEEP)
    return make(data, threads)


# --------------------------------------------------------------------------- CLI


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX for fast CPU inference",
        description="Export a cxrdx checkpoint to ONNX (dynamic batch, probabilities out, labels, size and "
        "preprocessing in the metadata) and check it against PyTorch.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="cxrdx .safetensors checkpoint")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--no-check", action="store_true", help="skip comparing ONNX Runtime with PyTorch")
    p.set_defaults(func=_run_export)


def _run_export(args: Any) -> int:
    report = export_onnx(args.weights, args.onnx, opset=args.opset, check=not args.no_check)
    check = (
        "not checked"
        if report.max_abs_diff is None
        else f"max |onnx - torch| = {report.max_abs_diff:.1e} on probe inputs"
    )
    print(f"wrote {report.path} (input N x C x {report.size} x {report.size}, probabilities out; {check})")
    return 0
