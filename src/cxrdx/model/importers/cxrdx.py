"""A cxrdx checkpoint as the source: validated strictly and re-saved, its provenance kept."""

from __future__ import annotations

from pathlib import Path

from cxrdx.files import head_bytes, is_safetensors
from cxrdx.model.checkpoint import CheckpointMeta, load_checkpoint, read_checkpoint_meta, save_checkpoint
from cxrdx.model.importers.registry import Importer, register


def revalidate(path: Path, out: Path, size: int | None, sha: str) -> tuple[int, CheckpointMeta]:
    """Load ``path`` (every check applies), optionally record a new input size, write it to ``out``;
    returns (tensors in the network's state dict, the metadata written)."""
    model, meta = load_checkpoint(path)
    if size:
        meta.preprocessing.size = size
    meta.source = {**meta.source, "kind": meta.source.get("kind", "cxrdx"), "revalidated_from": path.name,
                   "revalidated_sha256": sha}  # fmt: skip
    meta = CheckpointMeta.from_json(meta.to_json())
    save_checkpoint(out, model, meta)
    load_checkpoint(out)
    return len(model.state_dict()), meta


def _is_checkpoint(path: Path) -> bool:
    if not is_safetensors(head_bytes(path)):
        return False
    try:
        read_checkpoint_meta(path)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not ours
        return False
    return True


register(
    Importer(
        name="cxrdx",
        title="cxrdx",
        suffixes=(".safetensors",),
        detect=_is_checkpoint,
        convert=lambda request, out, sha: revalidate(request.path, out, request.size, sha),
    )
)
