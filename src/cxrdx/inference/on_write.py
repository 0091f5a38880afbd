"""When a checkpoint is written: its ONNX export, then the backend choice measured, so the first predict is fast.

``cxrdx train``, ``import`` and ``calibrate`` call ``prepare_export_note`` on the checkpoint they
wrote: the export goes to the cache (inference/export.py) and the default choice of backend,
precision and batch size is measured on its reference images (inference/choose.py,
inference/autotune.py) and cached for this machine, so the first ``cxrdx predict`` job needs no
tune. ``CXRDX_EXPORT_ON_WRITE=0`` turns both off, ``CXRDX_AUTOTUNE_ON_WRITE=0`` the measurement.
``python -m cxrdx.inference.on_write CKPT`` is the background process of ``export.export_in_background``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from cxrdx.files import file_sha256
from cxrdx.inference import choose, export
from cxrdx.reporter import Reporter, reporter_or_default


def tune_default(ckpt: str | os.PathLike) -> bool:
    """Measure (and cache) the default choice for an exported checkpoint; True when it measured now."""
    from cxrdx.device import available_threads
    from cxrdx.inference.predictor import Predictor
    from cxrdx.model.checkpoint import read_checkpoint_meta

    if os.environ.get("CXRDX_AUTOTUNE_ON_WRITE", "1") == "0":
        return False
    sha = file_sha256(ckpt)
    predictor = Predictor(None, read_checkpoint_meta(ckpt), session=object(), checkpoint=ckpt)
    return choose.tune(predictor, sha, choose.candidates(sha), available_threads())[1]


def prepare_export_note(command: str, ckpt: str | os.PathLike, reporter: Reporter | None = None) -> None:
    """``export.prepare_export_note``, then the default backend choice measured, with one note when it did."""
    export.prepare_export_note(command, ckpt, reporter)
    if os.environ.get("CXRDX_EXPORT_ON_WRITE", "1") == "0" or not export.is_exported(ckpt):
        return
    start = time.perf_counter()
    with contextlib.suppress(Exception):  # predict measures it then
        if tune_default(ckpt):
            reporter_or_default(reporter, command).note(
                f"backend for {Path(ckpt).name} measured on this machine in {time.perf_counter() - start:.1f} s "
                "(cached: the first `cxrdx predict` needs no tune)"
            )


if __name__ == "__main__":  # export.export_in_background's process
    import sys

    with contextlib.suppress(Exception):  # nobody is there to read an error; predict exports again
        if export.prepare_export(sys.argv[1]):
            tune_default(sys.argv[1])
