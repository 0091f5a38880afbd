"""A checkpoint as a self-describing ONNX file, the check against PyTorch, and the export cache.

The exported graph outputs *probabilities* (sigmoid applied inside), has a dynamic
batch axis and a fixed square input of the checkpoint's size, and carries in its
``metadata_props`` everything needed to use it without cxrdx: label order, size, the
preprocessing (normalisation) record, thresholds and the sha256 of the checkpoint it
came from. ``cached_session`` exports a checkpoint once and keeps the file, so
``Predictor.load`` pays the export only the first time.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrdx.errors import CheckpointError, ConfigError
from cxrdx.files import atomic_write, file_sha256
from cxrdx.imaging.letterbox import resize_float
from cxrdx.inference.backends import (
    INPUT_NAME,
    OUTPUT_NAME,
    OpenVinoSession,
    make_session,
    onnxruntime_available,
)

if TYPE_CHECKING:
    import onnxruntime
    import torch

    from cxrdx.model.checkpoint import CheckpointMeta

DEFAULT_OPSET = 17
EXPORT_TOLERANCE = 1e-4
CACHE_KEEP = 8  # ONNX exports kept in the cache folder


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how closely ONNX Runtime reproduced PyTorch."""

    path: Path
    source_sha256: str
    size: int
    max_abs_diff: float | None  # over the probe inputs; None when the check was skipped


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
    images = [resize_float(im, s, s) for im in low]
    return np.concatenate([meta.preprocessing(im)[0][None] for im in images])


def export_onnx(
    ckpt: str | os.PathLike, out: str | os.PathLike, opset: int = DEFAULT_OPSET, check: bool = True
) -> ExportReport:
    """Write ``out`` (.onnx) from a cxrdx checkpoint and, when ``check``, verify it against PyTorch."""
    from cxrdx.model.checkpoint import load_checkpoint

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
