"""The backends and precisions ``cxrdx predict`` chooses among on this machine, and putting the choice to use.

Candidates, named ``"<runtime> <precision>"``: ``onnx fp32`` (ONNX Runtime, the reference), ``openvino
fp32``, ``openvino bf16`` (only where the CPU has native bf16: the ``amx_bf16`` or ``avx512_bf16`` flag,
or OpenVINO's ``OPTIMIZATION_CAPABILITIES`` where there is no /proc/cpuinfo) and ``onnx int8`` (only
where ``cxrdx quantize`` made one for this kind of CPU). ``--precision fp32`` keeps the exact ones,
``--backend`` keeps one runtime's. ``inference/autotune.py`` measures them on the checkpoint's
reference images (``inference/reference.py``) and admits a reduced precision only when it passes
the check against the stored fp32 outputs; the choice and every check are cached with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrdx.device import cpu_info
from cxrdx.errors import CheckpointError, ConfigError
from cxrdx.inference import autotune, reference
from cxrdx.inference.backends import (
    FEATURES_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    onnxruntime_available,
    open_session,
    openvino_available,
)
from cxrdx.settings import PRECISIONS

BASELINE = "onnx fp32"  # the reference's maker: always admitted
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def bf16_native() -> bool:
    """Whether the CPU computes bf16 natively (AMX or AVX512-BF16), so OpenVINO bf16 is worth a try."""
    _model, flags = cpu_info()
    if flags:
        return any(f in flags for f in BF16_FLAGS)
    if not openvino_available():  # no /proc/cpuinfo (macOS, Windows): ask OpenVINO
        return False
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no CPU plugin: no bf16
        return False


def _int8_variant() -> str:
    from cxrdx.inference.int8 import int8_variant

    return int8_variant()


def candidates(sha: str, backend: str = "auto", precision: str = "auto") -> list[str]:
    """What may run this checkpoint here, for ``--backend`` and ``--precision`` (empty: torch only)."""
    from cxrdx.inference.export import cached_export_path

    if precision == "int8":
        return [f"onnx {_int8_variant()}"]
    if precision == "bf16":
        return ["openvino bf16"]
    ort = backend in ("auto", "onnx") and onnxruntime_available()
    ov = backend in ("auto", "openvino") and openvino_available()
    out = [BASELINE] if ort else []
    out += ["openvino fp32"] if ov else []
    if precision == "auto":
        out += ["openvino bf16"] if ov and bf16_native() else []
        variant = _int8_variant() if ort else None
        out += [f"onnx {variant}"] if variant and cached_export_path(sha, variant).is_file() else []
    return out


_IMPORT_S: dict[str, float] = {}  # seconds importing a runtime took in this process, when it was timed


def import_seconds(runtime: str) -> float:
    """What importing ``runtime``'s module costs a job: timed here when it is not imported yet (OpenVINO:
    0.1 s beside numpy and ONNX Runtime, 0.36 s in a bare interpreter), else what was timed before, else 0 (ONNX Runtime: predict imports it anyway)."""
    import importlib
    import sys
    import time

    module = "onnxruntime" if runtime == "onnx" else runtime
    if module not in sys.modules:
        t0 = time.perf_counter()
        importlib.import_module(module)
        _IMPORT_S[module] = time.perf_counter() - t0
    return _IMPORT_S.get(module, 0.0)


def open_candidate(name: str, sha: str, threads: int | None, prep: Any = None) -> Any:
    """A session of candidate ``name`` on the checkpoint's cached export."""
    from cxrdx.inference.export import cached_export_path

    runtime, precision = name.split()
    path = cached_export_path(sha, precision if precision.startswith("int8") else "fp32")
    return open_session(path, threads, runtime, prep=prep, precision=precision)


def reduced_session(
    ckpt: str | os.PathLike, meta: Any, precision: str, backend: str, device: object, threads: int | None
) -> tuple[Any, str, Any]:
    """(session, precision, meta) for ``Predictor.load(precision="int8" | "bf16")``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "bf16":
        from cxrdx.inference.int8 import int8_meta, int8_session

        session, variant = int8_session(ckpt, precision, backend, device, threads)
        return session, variant, int8_meta(meta, session)  # the OOD threshold refitted for int8's features
    if backend not in ("auto", "openvino") or str(device).split(":")[0] != "cpu" or not openvino_available():
        raise ConfigError(
            f"--precision bf16 runs on OpenVINO on the CPU (asked: backend {backend}, device {device}); "
            "install openvino (`pip install openvino`) and use --backend auto or openvino, or --precision fp32"
        )
    from cxrdx.files import file_sha256
    from cxrdx.inference import export

    sha = file_sha256(ckpt)
    if not export.cached_export_path(sha).is_file():
        from cxrdx.model.checkpoint import load_checkpoint

        export.export_to_cache(sha, *load_checkpoint(ckpt))
    try:
        return open_candidate("openvino bf16", sha, threads, meta.preprocessing), "bf16", meta
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt}: its export could not be written to the cache ({exc})") from exc


def _run(session: Any, x: np.ndarray) -> np.ndarray:
    """(N, L + F): the outputs, then the pooled features (one pass, as a predict job with an OOD gate)."""
    probs, feats = session.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: x})
    return np.concatenate([np.asarray(probs, np.float32), np.asarray(feats, np.float32)], axis=1)


def tune(
    predictor: Any,
    sha: str,
    names: Sequence[str],
    cores: int,
    measure_now: bool = True,
) -> tuple[autotune.Tuned | None, bool, Any]:
    """``autotune.tuned_for`` on the checkpoint's reference images: (settings, measured now, winner's session)."""
    from cxrdx.inference.export import cached_export_path
    from cxrdx.metrics.calibration import apply_calibration

    path = cached_export_path(sha)
    if not path.is_file() or not names:
        return None, False, None  # an export kept in memory only (read-only cache)
    prep = predictor.meta.preprocessing
    labels, cal, thresholds, ood = (
        predictor.labels,
        predictor.calibration,
        predictor.thresholds,
        predictor.ood,
    )

    def measure() -> tuple[autotune.Tuned, Any]:
        fp32: list[Any] = []

        def run_fp32(x: np.ndarray) -> np.ndarray:
            fp32[:] = fp32 or [open_candidate(BASELINE, sha, cores, prep)]
            return _run(fp32[0], x)

        ref = reference.ensure(path, run_fp32, predictor.prepare, prep.size, labels)
        x = reference.inputs(ref.images, predictor.prepare)

        def check(name: str, outputs: np.ndarray) -> dict:
            # int8's OOD agreement was checked by `cxrdx quantize`, with the threshold it refitted for int8
            gate = None if name.split()[1].startswith("int8") else ood
            c = reference.check(
                ref, outputs, lambda raw: apply_calibration(raw, cal, labels), thresholds, gate
            )
            if name == BASELINE or len(names) == 1:  # the reference's maker; a precision asked for by name
                c.passed = True
            return c.to_dict()

        return autotune.measure(
            names,
            lambda n: open_candidate(n, sha, cores, prep),
            _run,
            x,
            check,
            cores,
            open_cost=lambda n: import_seconds(n.split()[0]),
            reopen=lambda n: n.startswith("openvino"),  # its compiled model is cached (backends.py)
        )

    return autotune.tuned_for(path.name, names, measure, cores=cores, measure_now=measure_now)


def current(predictor: Any) -> str:
    """The candidate name of the predictor's session (``onnx fp32``, ``openvino bf16``, ...)."""
    parts = predictor.backend.split()
    return f"{parts[0]} {parts[1] if len(parts) > 1 else 'fp32'}"


def apply(predictor: Any, tuned: autotune.Tuned, session: Any, sha: str, threads: int) -> None:
    """Run ``predictor`` on the chosen candidate (``session`` when just measured, else opened now)."""
    if current(predictor) == tuned.candidate and tuned.threads == threads:
        return
    if session is None:
        session = open_candidate(tuned.candidate, sha, tuned.threads, predictor.meta.preprocessing)
    predictor.session = session
    predictor.precision = tuned.precision
    if tuned.precision.startswith("int8"):
        from cxrdx.inference.int8 import int8_meta

        predictor.meta = int8_meta(predictor.meta, session)


def for_job(
    predictor: Any,
    weights: str,
    files: Sequence[Path],
    cores: int,
    backend: str,
    precision: str,
    measure_now: bool,
    log: Callable[[str], None],
    n_images: int | None = None,
) -> autotune.Tuned | None:
    """Choose (cached, or measured now) and apply the backend, precision and batch size of a predict job,
    then time the decoding of several of its images for the decode threads. None: keep the defaults.
    ``n_images``: the job's size, for ``Tuned.for_images`` (None: the fastest, as a Ray actor runs)."""
    from cxrdx.files import file_sha256

    if predictor.session is None or not Path(weights).is_file():
        return None
    sha = file_sha256(weights)
    fastest, fresh, session = tune(predictor, sha, candidates(sha, backend, precision), cores, measure_now)
    if fastest is None:
        return None
    tuned = fastest.for_images(n_images)
    apply(predictor, tuned, session if tuned is fastest else None, sha, cores)
    step = max(1, len(files) // autotune.DECODE_IMAGES)
    sample = list(files)[::step][: autotune.DECODE_IMAGES]
    try:
        tuned.decode_ms = autotune.decode_ms(
            [lambda f=f: predictor.prepare(predictor.read(f, uint8_ok=True)[0]) for f in sample]
        )
        tuned.workers = autotune.workers_for(tuned.decode_ms, tuned.net_img_per_s, cores)
    except Exception:  # noqa: BLE001 - an unreadable image (its row says why): all CPUs but one decode
        tuned.decode_ms, tuned.workers = 0.0, max(1, cores - 1)
    log(autotune.describe(tuned, fresh, fastest.candidate))
    return tuned


def record(tuned: autotune.Tuned | None) -> str | None:
    """One line for the summary: the chosen backend and, for a reduced precision, its reference check."""
    if tuned is None:
        return None
    c = tuned.checks.get(tuned.candidate)
    how = f"; {reference.Check(**c).line()}" if c and tuned.precision != "fp32" else ""
    return f"chosen by measurement on this machine{how}"


def load_args(
    weights: str, backend: str, precision: str, cores: int, n_images: int | None = None
) -> tuple[str, str]:
    """(backend, precision) for ``Predictor.load`` that open the cached choice at once (no session
    opened twice): for a job of ``n_images`` (``Tuned.for_images``; None: a server, the fastest);
    the arguments as given when nothing is cached."""
    from cxrdx.files import file_sha256
    from cxrdx.inference.export import cached_export_path

    if backend == "torch" or not Path(weights).is_file():
        return backend, precision
    sha = file_sha256(weights)
    names = candidates(sha, backend, precision)
    if not names or not cached_export_path(sha).is_file():
        return backend, precision
    tuned = autotune.cached_choice(cached_export_path(sha).name, names, cores)
    if tuned is None:
        return backend, precision
    tuned = tuned.for_images(n_images)
    return tuned.runtime, "int8" if tuned.precision.startswith("int8") else tuned.precision
