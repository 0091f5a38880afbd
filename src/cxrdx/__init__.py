"""cxrdx: chest X-ray findings with DenseNet121, done correctly and pleasant to use."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cxrdx.predict import Predictor


def __getattr__(name: str):
    # Lazy so `import cxrdx` stays light (no torch) for the CLI's help and for tools.
    if name == "Predictor":
        from cxrdx.predict import Predictor

        return Predictor
    raise AttributeError(name)


__all__ = ["Predictor", "__version__"]
