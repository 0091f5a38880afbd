"""cxrdx: chest X-ray findings with DenseNet121, done correctly and pleasant to use.

The public API (everything else is internal and may change)::

    from cxrdx import FINDINGS, Predictor, read_image, read_labels, read_label_table, train, TrainConfig
    from cxrdx import evaluate, EvaluateConfig, import_weights

Every command is also a job with the same settings as its flags: ``cxrdx.jobs.<command>`` has
``Config``, ``run(config, reporter=None) -> Result`` (e.g. ``cxrdx.jobs.split``, ``cxrdx.jobs.predict``).

Names load lazily, so ``import cxrdx`` stays light (no torch) for the CLI's help and for tools.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# torch's OpenMP (libgomp) busy-waits at every barrier by default. When the cores are shared
# (predict's decode threads, ONNX Runtime, other processes) a 0.3 s DenseNet121 forward then
# takes 5-10 s (docs/performance.md, section 5). Set before torch loads; a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# public name -> module that defines it
_API = {
    "FINDINGS": "cxrdx.labels",
    "Predictor": "cxrdx.inference.predictor",
    "Prediction": "cxrdx.inference.predictor",
    "read_image": "cxrdx.imaging.read",
    "read_labels": "cxrdx.data.tables",
    "read_label_table": "cxrdx.data.tables",
    "train": "cxrdx.training.loop",
    "TrainConfig": "cxrdx.training.config",
    "evaluate": "cxrdx.evaluation.evaluate",
    "EvaluateConfig": "cxrdx.evaluation.config",
    "import_weights": "cxrdx.model.import_weights",
}

if TYPE_CHECKING:
    from cxrdx.data.tables import read_label_table, read_labels
    from cxrdx.evaluation.config import EvaluateConfig
    from cxrdx.evaluation.evaluate import evaluate
    from cxrdx.imaging.read import read_image
    from cxrdx.inference.prediction import Prediction
    from cxrdx.inference.predictor import Predictor
    from cxrdx.labels import FINDINGS
    from cxrdx.model.import_weights import import_weights
    from cxrdx.training.config import TrainConfig
    from cxrdx.training.loop import train


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cxrdx' has no attribute {name!r}")


__all__ = [  # noqa: F822 (resolved lazily by __getattr__)
    "FINDINGS",
    "EvaluateConfig",
    "Prediction",
    "Predictor",
    "TrainConfig",
    "__version__",
    "evaluate",
    "import_weights",
    "read_image",
    "read_label_table",
    "read_labels",
    "train",
]
