"""What a dataset is, in words: its name and kind (phantom, real or unknown), for the model card.

``cxrdx synth`` writes ``dataset.json`` (``MARKER_FILE``) beside its ``Data_Entry.csv``;
``prepare`` finds it next to the label CSVs or above the images folder and records the
origin in ``cache.json``; ``train`` carries it into the checkpoint's ``model_card``, so a
model trained on phantoms says so wherever it is used. Without a marker a table is
``real`` only when its file is one the project knows (NIH's ``Data_Entry_2017*.csv``,
or a table a dataset reader read: ``LabelTable.dataset``), else ``unknown``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

MARKER_FILE = "dataset.json"  # the same name is written by cxrdx.phantom.dataset (a sibling layer)
KINDS = ("phantom", "real", "unknown")
KNOWN_FILES = {"data_entry_2017": "NIH ChestX-ray14"}  # file-name prefix (lower case) -> dataset


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The ``dataset.json`` in ``folder``, when there is a readable one with a valid kind."""
    path = Path(folder) / MARKER_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("kind") not in KINDS:
        return None
    return {"dataset": str(info.get("dataset") or info.get("name") or path.parent.name), "kind": info["kind"]}


def dataset_origin(
    labels: Sequence[str | os.PathLike],
    images: str | os.PathLike | None = None,
    named: Sequence[str | None] = (),
) -> dict:
    """``{"dataset": name, "kind": phantom|real|unknown}`` for label CSVs (and their images folder).

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
        return {"dataset": ", ".join(dict.fromkeys(names)), "kind": "real"}
    stems = ", ".join(Path(p).name for p in labels)
    return {"dataset": stems or "unknown", "kind": "unknown"}
