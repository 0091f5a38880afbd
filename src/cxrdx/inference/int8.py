"""The int8 model at run time: which variant this CPU runs, its session, and the record it carries.

``cxrdx quantize`` (``cxrdx.jobs.quantize_build``) makes the file: ONNX Runtime static QDQ, calibrated
on a prepared cache's training split and kept (in the export cache, beside the fp32 export) only if
its validation AUROC holds. What the runtime needs is here: the variant for this CPU (on x86 without
VNNI the weights are 7-bit, ``int8r7``, against u8 x s8 saturation; each variant is cached under its
own name, so a file is only used on the kind of CPU it was checked on), the session on that file,
the record of how it was checked (the ONNX metadata ``RECORD_KEY``), and the checkpoint metadata with
the out-of-distribution threshold refitted for int8's features, which ``Predictor`` applies.
"""

from __future__ import annotations

import json
import os

from cxrdx.device import cpu_info
from cxrdx.errors import CheckpointError, ConfigError
from cxrdx.settings import INT8_MAX_AUROC_DROP, PRECISIONS

MAX_AUROC_DROP = INT8_MAX_AUROC_DROP  # validation AUROC int8 may lose against fp32
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
PRECISION_KEY = "cxrdx_precision"  # ONNX metadata: the variant (int8 / int8r7)
RECORD_KEY = "cxrdx_quantization"  # ONNX metadata: how the file was calibrated and checked (JSON)


def int8_variant() -> str:
    """``int8``, or ``int8r7`` (7-bit weights) on an x86 CPU without VNNI."""
    _model, flags = cpu_info()
    x86 = "avx2" in flags or "sse2" in flags
    return "int8r7" if x86 and not any(f in flags for f in VNNI_FLAGS) else "int8"


def int8_session(ckpt: str | os.PathLike, precision: str, backend: str, device: object, threads: int | None):
    """(session, variant) on the int8 model ``cxrdx quantize`` made for ``ckpt`` on this kind of CPU."""
    from cxrdx.inference.backends import onnxruntime_available
    from cxrdx.inference.export import exported_session

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if backend not in ("auto", "onnx") or str(device).split(":")[0] != "cpu" or not onnxruntime_available():
        raise ConfigError(
            f"--precision int8 runs on ONNX Runtime on the CPU (asked: backend {backend}, device {device}); "
            "use --backend onnx --device cpu with onnxruntime installed, or --precision fp32"
        )
    variant = int8_variant()
    session = exported_session(ckpt, threads, precision=variant)
    if session is None:
        raise CheckpointError(
            f"{ckpt}: no int8 model for this checkpoint on this kind of CPU ({variant}) yet; make one with "
            f"`cxrdx quantize --weights {ckpt} --data CACHE` (calibrated on the cache's training split, kept "
            f"only if its validation AUROC is within {MAX_AUROC_DROP} of fp32), or use --precision fp32"
        )
    return session, variant


def int8_record(session) -> dict | None:
    """How the int8 file an ONNX Runtime session runs was calibrated and checked (its metadata), if recorded."""
    try:
        return json.loads(session.get_modelmeta().custom_metadata_map[RECORD_KEY])
    except (AttributeError, KeyError, ValueError):  # not an ORT session, or not made by cxrdx quantize
        return None


def int8_meta(meta, session):
    """``meta`` with the OOD threshold ``cxrdx quantize`` refitted for the int8 file's features (its record),
    when it has one; the fp32 reference (mean, precision) is kept."""
    from dataclasses import replace

    record = int8_record(session) or {}
    t8 = (record.get("ood") or {}).get("threshold_int8")
    if meta.ood is None or t8 is None:
        return meta
    return replace(
        meta, ood={**meta.ood, "threshold": float(t8), "threshold_for": f"int8 ({record.get('variant')})"}
    )
