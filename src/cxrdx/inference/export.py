"""A checkpoint as a self-describing ONNX file, the check against PyTorch, and the export cache.

The exported graph outputs *probabilities* (sigmoid applied inside), second the
pooled ``features`` the classifier reads (for the out-of-distribution score) and, third, where
the network ends in average pool + linear (``cxrdx.explain.cam.linear_head``), the class
activation maps ``cams`` (N, L, h, w) whose ReLU is Grad-CAM on the cells (heatmaps with no
backward pass, ``cxrdx.inference.heatmaps``); it has a dynamic
batch axis and a fixed square input of the checkpoint's size, and carries in its
``metadata_props`` everything needed to use it without cxrdx: label order, size, the
preprocessing (normalisation) record, thresholds and the sha256 of the checkpoint it
came from. ``cached_session`` exports a checkpoint once and keeps the file, so
``Predictor.load`` pays the export only the first time; ``prepare_export`` makes it when a
checkpoint is written (train, import, calibrate), so even the first ``cxrdx predict`` is fast.
The cached graph is *folded* (inference/fold.py): it takes the letterboxed gray image, the
normalisation and the gray-to-3-channel copy folded into the first convolution.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrdx.errors import CheckpointError, ConfigError, CxrdxError
from cxrdx.files import atomic_write, cache_root, file_sha256
from cxrdx.imaging.letterbox import resize_float
from cxrdx.inference.backends import (
    FEATURES_NAME,
    GRAY_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    GrayFeed,
    OpenVinoSession,
    make_session,
    onnxruntime_available,
    open_session,
)
from cxrdx.metrics.calibration import resolve_calibration
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.settings import ONNX_OPSET

if TYPE_CHECKING:
    import onnxruntime
    import torch

    from cxrdx.model.checkpoint import CheckpointMeta

DEFAULT_OPSET = ONNX_OPSET
EXPORT_TOLERANCE = 1e-4
CACHE_KEEP = 8  # ONNX exports kept in the cache folder
# Part of the cache key: bump it when the exported graph changes (2: second output "features";
# 3: the normalisation and the gray channels folded into the first convolution, input "gray";
# 4: "features" holds several depths, cxrdx.model.networks.depth_features_and_logits;
# 5: third output "cams", the class activation maps, cxrdx.explain.cam).
EXPORT_REVISION = 5
CAMS_NAME = "cams"  # (N, L, h, w) class activation maps: ReLU of them is Grad-CAM at class_layers.relu


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how closely ONNX Runtime reproduced PyTorch."""

    path: Path
    source_sha256: str
    size: int
    max_abs_diff: float | None  # over the probe inputs; None when the check was skipped


def onnx_metadata(
    meta: CheckpointMeta, source_sha256: str, fold: bool = False, cams: bool = False
) -> dict[str, str]:
    """The key/value strings embedded in the ONNX file (all JSON or plain text)."""
    from cxrdx import __version__

    normalised = (
        "float32 (N, C, size, size) named 'image': the [0, 1] gray image letterboxed to size, then "
        "(pixel_lo + x * (pixel_hi - pixel_lo) - mean) / std per 'preprocessing'"
    )
    folded = (
        f"float32 (N, 1, size, size) named '{GRAY_NAME}': the [0, 1] gray image letterboxed to size; "
        "the normalisation in 'preprocessing' and the gray-to-C-channel copy are folded into the "
        "first convolution"
    )
    cams_note = {
        CAMS_NAME: (
            "third output (N, L, h, w): the class activation maps M_c = sum_k w_ck A_k / (h w) of the last "
            "feature map A (class_layers.relu) and the classifier's weights w, before any ReLU; sum over the "
            "cells + the classifier's bias = the logit; Grad-CAM on the cells is ReLU(M_c) (cxrdx.explain.cam)"
        )
    }
    return {
        **(cams_note if cams else {}),
        "cxrdx_version": __version__,
        "architecture": meta.architecture,
        "labels": json.dumps(list(meta.labels)),
        "size": str(meta.preprocessing.size),
        "preprocessing": json.dumps(meta.preprocessing.to_dict(), sort_keys=True),
        "thresholds": json.dumps(meta.thresholds),
        "output": (
            "sigmoid scores, one column per entry of 'labels', BEFORE calibration: probabilities are "
            "sigmoid(logit(score) / temperature - log_prior_shift) per 'calibration' (method 'none': none); "
            "the thresholds apply to those"
        ),
        "calibration": json.dumps(
            resolve_calibration(meta.calibration, meta.provenance, meta.labels), sort_keys=True
        ),
        FEATURES_NAME: (
            "second output: the pooled features of several depths, the classifier's last "
            "(cxrdx.model.networks.depth_features_and_logits; the out-of-distribution score)"
        ),
        "input": folded if fold else normalised,
        "folded_input": json.dumps(fold),
        "source_sha256": source_sha256,
        "checkpoint_meta": meta.to_json(),
    }


def _with_sigmoid(model: torch.nn.Module, cams: bool = False) -> torch.nn.Module:
    """The graph's outputs: probabilities, features and, with ``cams``, the class activation maps
    (only for a network ``cxrdx.explain.cam.linear_head`` accepts)."""
    import torch

    from cxrdx.explain.cam import cam_cells, linear_head
    from cxrdx.model.networks import GRADCAM_LAYER, depth_features_and_logits

    linear = linear_head(model) if cams else None
    if cams and linear is None:
        raise CheckpointError("this network has no average-pool + linear head: no class activation maps")

    class _Probabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if linear is None:
                features, logits = depth_features_and_logits(self.net, x)  # the same pass as self.net(x)
                return torch.sigmoid(logits), features
            acts: list[torch.Tensor] = []  # the target layer's output, from the same pass
            layer = self.net.get_submodule(GRADCAM_LAYER)
            handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
            try:
                features, logits = depth_features_and_logits(self.net, x)
            finally:
                handle.remove()
            return torch.sigmoid(logits), features, cam_cells(acts[-1], linear)

    return _Probabilities(model).eval()


def exports_cams(model: torch.nn.Module) -> bool:
    """Whether the export of this network has the ``cams`` output (its head is average pool + linear)."""
    from cxrdx.explain.cam import linear_head

    return linear_head(model) is not None


def onnx_bytes(
    model: torch.nn.Module,
    meta: CheckpointMeta,
    source_sha256: str,
    opset: int = DEFAULT_OPSET,
    fold: bool = False,
    cams: bool | None = None,
) -> bytes:
    """Serialise the network (probabilities out, dynamic batch) with metadata, in memory.

    ``fold``: the graph takes (N, 1, S, S) gray in [0, 1] as ``gray``, the normalisation and the
    channel copies folded into the first convolution (inference/fold.py, exact). ``cams``: add the
    third output ``cams`` (None: where the network's head allows it, ``exports_cams``).
    """
    import onnx
    import torch

    size, channels = meta.preprocessing.size, meta.preprocessing.channels
    input_name = INPUT_NAME
    if fold:
        from cxrdx.inference.fold import fold_input

        model, channels, input_name = fold_input(model, meta.preprocessing), 1, GRAY_NAME
    cams = exports_cams(model) if cams is None else cams
    wrapped = _with_sigmoid(model, cams)
    outputs = [OUTPUT_NAME, FEATURES_NAME] + ([CAMS_NAME] if cams else [])
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
                input_names=[input_name],
                output_names=outputs,
                dynamic_axes={input_name: {0: "batch"}} | {name: {0: "batch"} for name in outputs},
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
    for key, value in onnx_metadata(meta, source_sha256, fold, cams).items():
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
    """Largest |ONNX - PyTorch| probability difference on (N, C, S, S) inputs.

    A folded graph (input ``gray``) gets the same inputs through ``GrayFeed``.
    """
    import torch

    x = np.ascontiguousarray(inputs, dtype=np.float32)
    with torch.inference_mode():
        ref = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    if not isinstance(session, GrayFeed) and session.get_inputs()[0].name == GRAY_NAME:
        from cxrdx.imaging.preprocessing import Preprocessing

        meta_map = session.get_modelmeta().custom_metadata_map
        session = GrayFeed(session, Preprocessing.from_dict(json.loads(meta_map["preprocessing"])))
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
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    fold: bool = False,
) -> ExportReport:
    """Write ``out`` (.onnx) from a cxrdx checkpoint and, when ``check``, verify it against PyTorch.

    ``fold``: input (N, 1, S, S) gray in [0, 1], normalisation folded in (what Predictor's cache holds).
    """
    from cxrdx.model.checkpoint import load_checkpoint

    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--onnx {out}: the output file name must end in .onnx")
    if out.is_dir():
        raise ConfigError(f"--onnx {out}: is a folder; give a file name such as {out / 'model.onnx'}")
    model, meta = load_checkpoint(ckpt)
    sha = file_sha256(ckpt)
    data = onnx_bytes(model, meta, sha, opset, fold=fold)
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
    """Where Predictor keeps ONNX exports of checkpoints: ``onnx/`` in the cxrdx cache folder."""
    return cache_root() / "onnx"


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently used exports (DenseNet121 is 28 MB each), and the
    OpenVINO compiled models of exports no longer there (inference/backends.py)."""
    import shutil

    entries = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        old.unlink(missing_ok=True)
    for compiled in folder.glob("*.openvino"):
        if not compiled.with_suffix(".onnx").is_file():
            shutil.rmtree(compiled, ignore_errors=True)


@functools.cache
def _torch_version() -> str:
    """The installed torch's version (the exporter), read from its metadata without importing it."""
    from importlib.metadata import version

    return version("torch").split("+")[0]


def cached_export_path(sha: str, precision: str = "fp32") -> Path:
    """The cache file of a checkpoint's export (by its sha256), without importing torch.

    ``precision``: ``fp32``, or an int8 variant of inference/int8.py (``int8`` / ``int8r7``).
    """
    tail = "" if precision == "fp32" else f"-{precision}"
    return (
        cache_dir() / f"{sha[:24]}-r{EXPORT_REVISION}-opset{DEFAULT_OPSET}-torch{_torch_version()}{tail}.onnx"
    )


def exported_session(
    ckpt: str | os.PathLike,
    threads: int | None = None,
    runtime: str = "onnx",
    sha: str | None = None,
    precision: str = "fp32",
) -> onnxruntime.InferenceSession | OpenVinoSession | None:
    """A session on the checkpoint's cached export, or None when it was not exported yet (or is damaged).

    Needs neither torch nor MONAI: ``cxrdx predict`` of one image starts in about a second.
    """
    path = cached_export_path(sha or file_sha256(ckpt), precision)
    if not path.is_file():
        return None
    try:
        session = open_session(path, threads, runtime)
    except (CheckpointError, KeyError, ValueError):
        return None  # a damaged cache entry: the caller exports again
    with contextlib.suppress(OSError):
        os.utime(path)  # most recently used: pruned last
    return session


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
    sha = file_sha256(ckpt)
    session = exported_session(ckpt, threads, runtime, sha=sha)
    if session is not None:
        return session
    data = export_to_cache(sha, model, meta)
    return open_session(data, threads, runtime, prep=meta.preprocessing)


def export_to_cache(sha: str, model: torch.nn.Module, meta: CheckpointMeta) -> bytes:
    """The folded export, written to the cache (kept in memory only when the folder is read-only)."""
    path = cached_export_path(sha)
    data = onnx_bytes(model, meta, sha, fold=meta.preprocessing.foldable)  # per-image norm: not foldable
    with contextlib.suppress(OSError, CxrdxError):  # read-only cache folder: atomic_write says CxrdxError
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        _prune(path.parent, keep=CACHE_KEEP)
        from cxrdx.inference.reference import prune

        prune(path.parent)  # the pruned exports' reference images
    return data


# --------------------------------------------------------------------------- a fast first call


def is_exported(ckpt: str | os.PathLike) -> bool:
    """Whether ``cxrdx predict`` will find this checkpoint's export in the cache (no torch needed)."""
    return cached_export_path(file_sha256(ckpt)).is_file()


def prepare_export(ckpt: str | os.PathLike) -> bool:
    """Export a checkpoint into the cache now, so its first ``cxrdx predict`` needs no export.

    ``cxrdx train``, ``import`` and ``calibrate`` call this on the checkpoint they wrote. True
    when it exported; False when it was there already, ONNX Runtime is not installed or the
    export failed (predict then says why, and can run on PyTorch).
    """
    from cxrdx.model.checkpoint import load_checkpoint

    if not onnxruntime_available():
        return False
    sha = file_sha256(ckpt)
    if cached_export_path(sha).is_file():
        return False
    try:
        model, meta = load_checkpoint(ckpt)
        export_to_cache(sha, model, meta)
    except CxrdxError:
        return False
    return cached_export_path(sha).is_file()


def prepare_export_note(command: str, ckpt: str | os.PathLike, reporter: Reporter | None = None) -> None:
    """``prepare_export`` for a command that just wrote ``ckpt``, with one note when it exported.

    The note goes to ``reporter`` (default: logging, logger ``cxrdx.<command>``).

    ``CXRDX_EXPORT_ON_WRITE=0`` turns it off (the first predict then runs on PyTorch and exports).
    """
    import time

    if os.environ.get("CXRDX_EXPORT_ON_WRITE", "1") == "0":
        return
    start = time.perf_counter()
    if prepare_export(ckpt):
        note = (
            f"ONNX export of {Path(ckpt).name} cached in {time.perf_counter() - start:.1f} s "
            "(the first `cxrdx predict` with it needs no export)"
        )
        reporter_or_default(reporter, command).note(note)


def export_in_background(ckpt: str | os.PathLike) -> None:
    """Start ``prepare_export(ckpt)`` in a detached, low-priority process (it outlives the caller).

    ``cxrdx predict`` of a few images with a checkpoint not yet exported runs them on PyTorch
    at once and leaves the export to this process, so the next call finds it.
    """
    import subprocess
    import sys

    def lower_priority() -> None:
        with contextlib.suppress(OSError):
            os.nice(10)

    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-m", "cxrdx.inference.on_write", str(Path(ckpt).resolve())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lower_priority if os.name == "posix" else None,  # noqa: PLW1509
        )
