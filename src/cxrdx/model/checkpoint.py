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
from typing import TYPE_CHECKING

import numpy as np

import cxrdx.files  # atomic_write looked up at call time: fault-injection tests patch cxrdx.files.atomic_write
from cxrdx.errors import CheckpointError, LabelError
from cxrdx.files import is_torch_pickle
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.imaging.sniff import sniff_image
from cxrdx.labels import FINDINGS, canonical_list

if TYPE_CHECKING:  # torch and MONAI load only when tensors are read: the ONNX path needs neither
    import torch
    from torch import nn

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
    # what it was trained on, in words (cxrdx.model.card): dataset, kind phantom|real|unknown, images,
    # patients, split, epochs
    model_card: dict = field(default_factory=dict)
    # how scores become probabilities (cxrdx.metrics.calibration): method prior+temperature|prior|none,
    # log_prior_shift and temperature per finding, fitted_on; {} = not recorded (resolved at load)
    calibration: dict = field(default_factory=dict)
    # how the thresholds were chosen: split, tta, calibration, positives per finding (cxrdx evaluate)
    threshold_info: dict = field(default_factory=dict)
    # out-of-distribution reference (cxrdx.model.ood): method, mean, threshold, fitted_on; its array
    # values (the precision) are tensors "ood.<key>" in the file; None = no reference statistics
    ood: dict | None = None
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
        if isinstance(self.ood, dict):  # arrays are stored as tensors beside the weights (_ood_arrays)
            data["ood"] = {k: v for k, v in self.ood.items() if k not in _ood_arrays(self)}
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


OOD_PREFIX = "ood."  # tensors of meta.ood (cxrdx.model.ood), not of the network: never in its state dict


def _ood_arrays(meta: CheckpointMeta) -> dict[str, np.ndarray]:
    """meta.ood's array values (e.g. the precision), by key."""
    if not isinstance(meta.ood, dict):
        return {}
    return {k: v for k, v in meta.ood.items() if isinstance(v, np.ndarray)}


def _ood_tensors(meta: CheckpointMeta) -> dict[str, torch.Tensor]:
    import torch

    return {OOD_PREFIX + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _ood_arrays(meta).items()}


def _take_ood_tensors(tensors: dict, meta: CheckpointMeta) -> None:
    """Move the ``ood.*`` tensors out of ``tensors`` into meta.ood as numpy arrays (dropped if no meta.ood)."""
    for key in [k for k in tensors if k.startswith(OOD_PREFIX)]:
        value = tensors.pop(key)
        if isinstance(meta.ood, dict):
            meta.ood[key[len(OOD_PREFIX) :]] = value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def model_from_meta(meta: CheckpointMeta) -> nn.Module:
    """The (untrained) network a checkpoint's metadata describes."""
    from cxrdx.model.networks import build_model

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
    tensors.update(_ood_tensors(meta))
    cxrdx.files.atomic_write(
        path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: meta.to_json()})
    )


def _refuse_other_files(path: Path) -> None:
    """A CheckpointError naming what the file is when it is not a safetensors file (pickle, Keras, image)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(132)
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
    kind = "DICOM" if head[128:132] == b"DICM" else sniff_image(head)
    if kind:
        raise CheckpointError(
            f"{path}: this is a {kind} image, not a model checkpoint; pass images as PATH arguments and "
            "a .safetensors checkpoint (or a name from `cxrdx weights list`) as --weights"
        )


def _parse_meta(path: Path, metadata: dict) -> CheckpointMeta:
    if METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{path}: safetensors file without cxrdx metadata; import it with `cxrdx import --from KIND`"
        )
    try:
        return CheckpointMeta.from_json(metadata[METADATA_KEY])
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{path}: cxrdx metadata is malformed ({exc})") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header


def read_checkpoint_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Only the metadata, from the file's JSON header: no tensors read, no torch imported."""
    path = Path(path)
    _refuse_other_files(path)
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= MAX_HEADER_BYTES:
                raise ValueError(f"header length {n} is not plausible")
            header = json.loads(fh.read(n))
        metadata = header.get("__metadata__") or {}
    except (OSError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); it may be truncated or corrupt"
        ) from None
    meta = _parse_meta(path, metadata)
    names = [k for k in header if k.startswith(OOD_PREFIX)]
    if names and isinstance(meta.ood, dict):  # the OOD arrays too (a few MB), still without torch
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            _take_ood_tensors({k: fh.get_tensor(k) for k in names}, meta)
    return meta


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Tensors and metadata of a cxrdx checkpoint, with clear errors for anything else."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    _refuse_other_files(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); it may be truncated or corrupt"
        ) from None
    meta = _parse_meta(path, metadata)
    _take_ood_tensors(tensors, meta)  # so the network's tensors stay an exact, strict match
    return tensors, meta


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointMeta]:
    """The network in eval mode and its metadata; refuses any mismatch."""
    import torch

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
    path: str | os.PathLike,
    change: Callable[[CheckpointMeta], None],
    out: str | os.PathLike | None = None,
) -> CheckpointMeta:
    """Rewrite a checkpoint's metadata atomically: in place, or into a new file ``out`` (same tensors)."""
    from safetensors.torch import save_file

    tensors, meta = read_checkpoint(path)
    change(meta)
    arrays = _ood_arrays(meta)
    meta = CheckpointMeta.from_json(meta.to_json())  # re-validate
    if isinstance(meta.ood, dict):
        meta.ood.update(arrays)
    tensors.update(_ood_tensors(meta))
    cxrdx.files.atomic_write(
        out if out is not None else path,
        lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: meta.to_json()}),
    )
    return meta
