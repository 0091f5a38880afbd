"""The checkpoint format: safetensors tensors plus a JSON metadata record, nothing ever unpickled.

A checkpoint is one ``.safetensors`` file: tensors by name plus a JSON metadata
record (``CheckpointMeta``) under the key ``cxrdx``. The metadata carries everything
needed to use the weights correctly (labels, input channels, BatchNorm eps, the exact
preprocessing), so no caller has to guess.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import cxrdx.files  # atomic_write looked up at call time: fault-injection tests patch cxrdx.files.atomic_write
from cxrdx.errors import CheckpointError, LabelError
from cxrdx.files import is_torch_pickle
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.labels import FINDINGS, canonical_list
from cxrdx.model.networks import build_model

FORMAT_VERSION = 1
METADATA_KEY = "cxrdx"


@dataclass
class CheckpointMeta:
    """Everything needed to use a checkpoint correctly, stored inside it."""

    architecture: str = "densenet121"
    labels: list[str] = field(default_factory=lambda: list(FINDINGS))
    in_channels: int = 3
    bn_eps: float = 1e-5
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    thresholds: dict[str, float] | None = None  # per finding name; None until evaluate chooses them
    threshold_method: str | None = None
    provenance: dict = field(default_factory=dict)  # dataset, split, epoch, val_loss, git commit, ...
    evaluation: dict = field(default_factory=dict)  # e.g. {"auroc": {name: value}, "dataset": ...}
    source: dict = field(default_factory=dict)  # for imported weights: kind, sha256, label mapping
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.preprocessing, dict):
            self.preprocessing = Preprocessing.from_dict(self.preprocessing)
        try:
            self.labels = canonical_list(self.labels)
        except LabelError as exc:
            raise CheckpointError(f"checkpoint label metadata is invalid: {exc}") from None
        if len(set(self.labels)) != len(self.labels):
            raise CheckpointError(f"checkpoint labels contain duplicates: {self.labels}")
        if self.preprocessing.channels != self.in_channels:
            raise CheckpointError(
                f"checkpoint metadata disagrees with itself: preprocessing has {self.preprocessing.channels} "
                f"channels but the network takes {self.in_channels}"
            )
        if self.thresholds is not None:
            try:
                self.thresholds = dict(
                    zip(canonical_list(self.thresholds), map(float, self.thresholds.values()), strict=True)
                )
            except LabelError as exc:
                raise CheckpointError(f"checkpoint thresholds are invalid: {exc}") from None
            unknown = set(self.thresholds) - set(self.labels)
            if unknown:
                raise CheckpointError(
                    f"thresholds name findings the model does not output: {sorted(unknown)}"
                )

    def to_json(self) -> str:
        data = asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        data = json.loads(text)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def model_from_meta(meta: CheckpointMeta) -> nn.Module:
    """The (untrained) network a checkpoint's metadata describes."""
    return build_model(meta.architecture, len(meta.labels), meta.in_channels, meta.bn_eps)


def is_init_only(meta: CheckpointMeta) -> bool:
    """True for an ImageNet initialisation (``--from torchvision``): train on it, never predict with it."""
    return bool(meta.provenance.get("init_only"))


def state_dict_problems(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """Every missing, unexpected and wrong-shape tensor, summarised (empty when they match)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")
            problems.append(f"{len(items)} {title}: {shown}")
    return problems


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Exact name and shape match, or a CheckpointError listing every difference."""
    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{source}: weights do not match the network; " + "; ".join(problems))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta) -> None:
    from safetensors.torch import save_file

    module = model.module if hasattr(model, "module") else model  # unwrap DDP
    module = getattr(module, "_orig_mod", module)  # unwrap torch.compile
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    cxrdx.files.atomic_write(
        path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: meta.to_json()})
    )


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Tensors and metadata of a cxrdx checkpoint, with clear errors for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    # a safetensors file starts with its u64 header length then "{"; that length may begin with 0x80
    if is_torch_pickle(head):
        raise CheckpointError(
            f"{path}: this is a PyTorch pickle, not a cxrdx .safetensors checkpoint; convert it once with "
            "`cxrdx import --from torchvision|chexnet|xrv SOURCE --out model.safetensors`"
        )
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        raise CheckpointError(
            f"{path}: this is a Keras .h5 file; convert it with `cxrdx import --from keras`"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); it may be truncated or corrupt"
        ) from None
    if METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{path}: safetensors file without cxrdx metadata; import it with `cxrdx import --from KIND`"
        )
    try:
        meta = CheckpointMeta.from_json(metadata[METADATA_KEY])
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{path}: cxrdx metadata is malformed ({exc})") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return tensors, meta


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointMeta]:
    """The network in eval mode and its metadata; refuses any mismatch."""
    tensors, meta = read_checkpoint(path)
    model = model_from_meta(meta)
    check_state_dict(model, tensors, str(path))
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(
            f"{path}: {len(broken)} tensor(s) hold NaN or infinite values (e.g. {', '.join(broken[:3])}); "
            "the file is corrupt or its training diverged: use another checkpoint"
        )
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), meta


def update_checkpoint_meta(
    path: str | os.PathLike, change: Callable[[CheckpointMeta], None]
) -> CheckpointMeta:
    """Rewrite a checkpoint's metadata in place (atomically), e.g. to record thresholds."""
    from safetensors.torch import save_file

    tensors, meta = read_checkpoint(path)
    change(meta)
    meta = CheckpointMeta.from_json(meta.to_json())  # re-validate
    cxrdx.files.atomic_write(
        path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: meta.to_json()})
    )
    return meta
