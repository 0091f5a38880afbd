"""OpenVINO's compiled model of an export, kept beside it so the next opening skips the compile.

Compiling DenseNet121 for the CPU took 0.36-0.54 s here, importing the compiled blob 0.19 s
(docs/performance.md section 13). The blob lies in ``<export>.openvino/<key>.blob``, one per
(OpenVINO version, CPU model and flags, compile settings): a cache folder shared between machines
never hands one CPU's kernels to another. It is written with ``atomic_write`` (a process reading it
while another writes sees the old blob or the new one, never half of one; OpenVINO's own
``CACHE_DIR`` writes in place), a blob OpenVINO refuses is deleted and compiled again, and the
folder goes when the cache prunes its export (``inference/export.py``). Only exports in the cxrdx
cache get one: nothing is written beside a user's own file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any


def cache_folder(model_source: str | os.PathLike | bytes) -> Path | None:
    """``<export>.openvino/`` for an export in the cxrdx cache folder; None for anything else (bytes,
    a user's own file)."""
    if isinstance(model_source, bytes):
        return None
    from cxrdx.files import cache_root

    path = Path(model_source).resolve()
    if not path.is_relative_to(cache_root().resolve()):
        return None
    return path.with_suffix(".openvino")


def blob_path(folder: Path, config: dict[str, Any]) -> Path:
    import openvino as ov

    from cxrdx.device import cpu_info

    model, flags = cpu_info()
    settings = ",".join(f"{k}={v}" for k, v in sorted(config.items()))
    key = f"{ov.__version__}|{model}|{' '.join(sorted(flags))}|{settings}"
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.blob"


def compile_model(core: Any, model_source: str | os.PathLike | bytes, config: dict[str, Any]) -> Any:
    """``core.compile_model`` for the CPU, through the blob cache where the source is a cached export."""
    from cxrdx.errors import CxrdxError
    from cxrdx.files import atomic_write

    source = model_source if isinstance(model_source, bytes) else str(model_source)
    folder = cache_folder(model_source)
    blob = blob_path(folder, config) if folder is not None else None
    if blob is not None and blob.is_file():
        try:
            return core.import_model(blob.read_bytes(), "CPU", config)
        except Exception:  # noqa: BLE001 - another OpenVINO's blob, a damaged file: compile again
            blob.unlink(missing_ok=True)
    compiled = core.compile_model(core.read_model(source), "CPU", config)
    if blob is not None:
        with contextlib.suppress(OSError, CxrdxError, RuntimeError):  # read-only or full cache: no blob
            blob.parent.mkdir(exist_ok=True)
            data = compiled.export_model().getvalue()
            atomic_write(blob, lambda tmp: Path(tmp).write_bytes(data))
    return compiled
