"""The registry of weight sources (timm's way): each ``importers/<source>.py`` registers one ``Importer``.

An ``Importer`` says everything ``cxrdx import --from NAME`` needs about one publisher's files:
its name, how its files are recognised (``detect``, for hints when ``--from`` names another
kind), the publisher's test-time preprocessing, which tensors it deliberately drops
(``ignore``), and how its file is read into cxrdx-named tensors (``read``), or, for a file that
is already a cxrdx checkpoint, the whole conversion (``convert``). ``cxrdx.model.import_weights``
runs the steps every source shares (label mapping by name, architecture fit, checks, writing).

Adding a source is one new file in this package that calls :func:`register` at import:
:func:`importers` imports every module of the package, so nothing else lists them.
``cxrdx.settings.IMPORT_SOURCES`` repeats the names (so ``cxrdx import --help`` needs no torch);
a test keeps the two equal.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrdx.errors import ConfigError
from cxrdx.settings import IMPORT_SOURCES

if TYPE_CHECKING:
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta

OPTION_FLAGS = {"xrv_weights": "--xrv-weights", "keras_norm": "--keras-norm"}  # source-specific options


@dataclass(frozen=True)
class Request:
    """What ``import_weights`` was asked for one file (the options a source may read)."""

    path: Path
    trust_pickle: bool = False
    inert_pickle: bool = False
    source_labels: list[str] | None = None  # the source's output names in order, if not the kind's default
    xrv_weights: str | None = None
    keras_norm: str | None = None
    size: int | None = None


@dataclass
class SourceWeights:
    """One file's tensors under cxrdx's names, and what is known about its outputs."""

    mapped: dict[str, torch.Tensor]
    unmapped: list[str]  # source tensors that map to nothing (an error unless empty)
    bn_eps: float
    labels: list[str] = field(default_factory=list)  # the source's outputs in order ('' = untrained output)
    output_names: tuple[str, ...] = ()  # names of the untrained outputs, for the summary
    thresholds: dict[str, float] | None = None  # the publisher's operating points by our finding names
    threshold_method: str | None = None
    # a head the importer made itself (torchvision: a fresh 14-finding head): (labels, mapping, dropped)
    head: tuple[list[str], dict[str, int], list[str]] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Importer:
    """One weights source. ``read`` or ``convert`` is set (``convert``: the file is already a checkpoint)."""

    name: str  # the ``--from`` value
    title: str  # who publishes it, in words
    suffixes: tuple[str, ...]  # the file names it reads end so
    detect: Callable[[Path], bool]  # does this file look like one of this source's (name or first bytes)?
    preprocessing: Callable[[Request], Preprocessing] | None = None  # the publisher's test-time recipe
    read: Callable[[Request], SourceWeights] | None = None
    convert: Callable[[Request, Path, str], tuple[int, CheckpointMeta]] | None = None  # (tensors, meta)
    ignore: tuple[str, ...] = ()  # source keys dropped on purpose (after prefixes are stripped)
    options: tuple[str, ...] = ()  # the source-specific ``Request`` fields it reads (``OPTION_FLAGS``)


_REGISTRY: dict[str, Importer] = {}
_LOADED = False


def register(importer: Importer) -> Importer:
    """Add a source (called by its module at import); a second source of the same name is an error."""
    known = _REGISTRY.get(importer.name)
    if known is not None and known is not importer:
        raise ValueError(f"weights source {importer.name!r} is registered twice")
    _REGISTRY[importer.name] = importer
    return importer


def importers() -> dict[str, Importer]:
    """Every registered source by name, in ``settings.IMPORT_SOURCES`` order (then any others by name)."""
    global _LOADED
    if not _LOADED:
        package = __name__.rsplit(".", 1)[0]
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            if info.name != __name__.rsplit(".", 1)[1]:
                importlib.import_module(f"{package}.{info.name}")
        _LOADED = True
    order = {name: i for i, name in enumerate(IMPORT_SOURCES)}
    names = sorted(_REGISTRY, key=lambda n: (order.get(n, len(order)), n))
    return {name: _REGISTRY[name] for name in names}


def get(name: str) -> Importer:
    found = importers().get(name)
    if found is None:
        raise ConfigError(f"--from {name!r} is unknown; choose one of {', '.join(importers())}")
    return found


def detect(path: Path) -> list[str]:
    """The sources whose files ``path`` looks like (by its name and first bytes); may be empty."""
    out = []
    for name, importer in importers().items():
        try:
            if importer.detect(path):
                out.append(name)
        except OSError:
            continue
    return out
