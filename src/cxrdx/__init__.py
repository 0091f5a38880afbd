"""cxrdx: chest X-ray findings with DenseNet121, done correctly and pleasant to use."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# torch's OpenMP (libgomp) busy-waits at every barrier by default. When the cores are shared
# (predict's decode threads, ONNX Runtime, other processes) a 0.3 s DenseNet121 forward then
# takes 5-10 s (docs/performance.md, section 5). Set before torch loads; a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from cxrdx.predict import Predictor


def __getattr__(name: str):
    # Lazy so `import cxrdx` stays light (no torch) for the CLI's help and for tools.
    if name == "Predictor":
        from cxrdx.predict import Predictor

        return Predictor
    raise AttributeError(name)


__all__ = ["Predictor", "__version__"]
