"""A cxrdx checkpoint as the source: validated strictly and re-saved, its provenance kept."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from cxrdx.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint


def revalidate(path: Path, out: Path, size: int | None, sha: str) -> tuple[nn.Module, CheckpointMeta]:
    """Load ``path`` (every check applies), optionally record a new input size, write it to ``out``."""
    model, meta = load_checkpoint(path)
    if size:
        meta.preprocessing.size = size
    meta.source = {**meta.source, "kind": meta.source.get("kind", "cxrdx"), "revalidated_from": path.name,
                   "revalidated_sha256": sha}  # fmt: skip
    meta = CheckpointMeta.from_json(meta.to_json())
    save_checkpoint(out, model, meta)
    load_checkpoint(out)
    return model, meta
