"""What a dataset is, in words: its name and kind (phantom, real or unknown), for the model card.

``cxrdx synth`` writes ``dataset.json`` (``MARKER_FILE``) beside its ``Data_Entry.csv``;
``prepare`` finds it next to the label CSVs or above the images folder and records the
origin in ``cache.json``; ``train`` carries it into the checkpoint's ``model_card``, so a
model trained on phantoms says so wherever it is used. Without a marker a table is
``real`` only when its file is one the project knows (NIH's ``Data_Entry_2017*.csv``,
or a table a dataset reader read: ``LabelTable.dataset``), else ``unknown``.

:class:`Origin` is THE type of this concept everywhere: ``cache.json``'s ``origin``, the training data,
the evaluation set, and ``metrics.json``'s ``dataset.origin`` (``cxrdx.evaluation.metrics_record``
reads and writes it with ``to_json`` / ``from_json``). Standard library only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrdx.errors import DataError

MARKER_FILE = "dataset.json"  # the same name is written by cxrdx.phantom.dataset (a sibling layer)
KINDS = ("phantom", "real", "unknown")
KNOWN_FILES = {"data_entry_2017": "NIH ChestX-ray14"}  # file-name prefix (lower case) -> dataset


@dataclass(frozen=True)
class Origin:
    """What a dataset is: its name and kind (phantom | real | unknown; several datasets trained on together
    join their kinds with "+", e.g. ``phantom+real``). JSON: ``{"dataset": name, "kind": kind}``; keys a
    later cxrdx adds are kept in ``extra`` and written back."""

    dataset: str | None = None
    kind: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset, "kind": self.kind}
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "origin") -> Origin:
        if not isinstance(data, Mapping):
            raise DataError(f"{where}: expected an object, got {type(data).__name__}")
        for key in ("dataset", "kind"):
            if isinstance(data.get(key), Mapping | list):
                raise DataError(f"{where}: {key}: unexpected {type(data[key]).__name__}, expected text")
        extra = {k: v for k, v in data.items() if k not in ("dataset", "kind")}
        return cls(dataset=data.get("dataset"), kind=data.get("kind", "unknown"), extra=extra)


def read_marker(folder: str | os.PathLike) -> Origin | None:
    """The ``dataset.json`` in ``folder``, when there is a readable one with a valid kind."""
    path = Path(folder) / MARKER_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("kind") not in KINDS:
        return None
    return Origin(str(info.get("dataset") or info.get("name") or path.parent.name), info["kind"])


def dataset_origin(
    labels: Sequence[str | os.PathLike],
    images: str | os.PathLike | None = None,
    named: Sequence[str | None] = (),
) -> Origin:
    """The :class:`Origin` of label CSVs (and their images folder).

    ``named``: dataset names the table readers reported (``LabelTable.dataset``), if any.
    """
    folders = [Path(p).resolve().parent for p in labels]
    if images is not None:
        folders += [Path(images).resolve(), Path(images).resolve().parent]
    for folder in dict.fromkeys(folders):
        found = read_marker(folder)
        if found:
            return found
    names = [n for n in named if n]
    for p in labels:
        for prefix, name in KNOWN_FILES.items():
            if Path(p).name.lower().startswith(prefix):
                names.append(name)
    if names:
        return Origin(", ".join(dict.fromkeys(names)), "real")
    stems = ", ".join(Path(p).name for p in labels)
    return Origin(stems or "unknown", "unknown")
