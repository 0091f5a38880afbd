"""torchvision's DenseNet layout (also CheXNet's and torchxrayvision's): key mapping by name.

Old ``norm.1`` style or new ``norm1``, DataParallel ``module.`` and wrapper prefixes;
the classifier (``classifier.weight`` or CheXNet's ``classifier.0.weight``) maps to
``class_layers.out``. An ImageNet torchvision file becomes a feature initialisation
with a freshly (but reproducibly) initialised 14-finding head.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch

from cxrdx.errors import CheckpointError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.labels import FINDINGS
from cxrdx.model.importers.registry import Importer, Request, SourceWeights, register
from cxrdx.model.pickle_reader import extract_state_dict, load_torch_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCH_BN_EPS = 1e-5

_PREFIXES = ("module.", "densenet121.", "_orig_mod.")
_TV_DENSE = re.compile(
    r"^features\.denseblock(\d+)\.denselayer(\d+)\.(norm|conv)\.?([12])\."
    r"(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
_TV_SAME = re.compile(
    r"^features\.(conv0\.weight|(norm0|norm5|transition\d+\.norm)\."
    r"(weight|bias|running_mean|running_var|num_batches_tracked)|transition\d+\.conv\.weight)$"
)
_TV_HEAD = re.compile(r"^classifier\.(?:0\.)?(weight|bias)$")


def strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def map_torchvision_key(key: str) -> str | None:
    """torchvision-style DenseNet key (old ``norm.1`` or new ``norm1``, any wrapper prefix) -> cxrdx key.

    Returns None for keys with no counterpart; the classifier is mapped separately
    (``classifier.weight`` / CheXNet's ``classifier.0.weight`` -> ``class_layers.out.weight``).
    """
    key = strip_prefixes(key)
    if m := _TV_DENSE.match(key):
        block, layer, kind, n, param = m.groups()
        return f"features.denseblock{block}.denselayer{layer}.layers.{kind}{n}.{param}"
    if _TV_SAME.match(key):
        return key
    if m := _TV_HEAD.match(key):
        return f"class_layers.out.{m.group(1)}"
    return None


def map_torch_state(
    state: dict[str, torch.Tensor], ignore: Iterable[str] = ()
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map every key; returns (cxrdx-named tensors, source keys that map to nothing)."""
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    ignore = set(ignore)
    for key, value in state.items():
        if strip_prefixes(key) in ignore:
            continue
        new = map_torchvision_key(key)
        if new is None:
            unmapped.append(key)
        elif new in mapped:
            raise CheckpointError(
                f"two source tensors map to {new} (one of them is {key}); the file is ambiguous"
            )
        else:
            mapped[new] = value
    return mapped, sorted(unmapped)


RESIZE_BEFORE_CROP = 256 / 224  # torchvision's evaluation transform: Resize(256), then crop 224


def imagenet_preprocessing(size: int | None, crops: int = 1) -> Preprocessing:
    """torchvision's evaluation transform on an 8-bit PIL image, as CheXNet's test script runs it:
    ``Resize(256)`` (the shorter side, Pillow's bilinear in 8 bits), ``CenterCrop(224)`` or, with
    ``crops=10``, ``TenCrop(224)`` with the outputs averaged; ``ToTensor`` ([0, 1]) and ImageNet
    mean/std on the gray image copied to 3 channels."""
    size = size or 224
    return Preprocessing(
        size=size, channels=3, pixel_range=(0.0, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        fit="resize_crop", resize="pil8", bits=8, resize_to=round(size * RESIZE_BEFORE_CROP), crops=crops,
    )  # fmt: skip


def fresh_head(mapped: dict[str, torch.Tensor], num_classes: int) -> None:
    """Add a new classifier to ImageNet features, the same init every time the same file is imported."""
    norm5 = mapped.get("features.norm5.weight")
    width = int(norm5.shape[0]) if norm5 is not None else 1024
    generator = torch.Generator().manual_seed(0)
    bound = 1.0 / math.sqrt(width)
    mapped["class_layers.out.weight"] = (torch.rand(num_classes, width, generator=generator) * 2 - 1) * bound
    mapped["class_layers.out.bias"] = torch.zeros(num_classes)


def read_torch(request: Request, ignore: Iterable[str]) -> tuple[SourceWeights, dict, object]:
    """A PyTorch file (never unpickled unless trusted): its tensors mapped by torchvision's names.

    Returns (the weights with no labels yet, the raw state dict, the pickled model object if any)."""
    obj, notes = load_torch_file(request.path, request.trust_pickle, inert=request.inert_pickle)
    state, model_obj = extract_state_dict(obj, str(request.path))
    mapped, unmapped = map_torch_state(state, ignore)
    return SourceWeights(mapped, unmapped, TORCH_BN_EPS, notes=list(notes)), state, model_obj


def _read(request: Request) -> SourceWeights:
    weights, _state, _obj = read_torch(request, IMPORTER.ignore)
    labels = list(FINDINGS)
    fresh_head(weights.mapped, len(labels))
    weights.head = (labels, {}, ["ImageNet classifier (1000 classes)"])
    weights.provenance["init_only"] = True
    weights.notes.append(
        "ImageNet features only; the 14-finding head is freshly initialised: train before use"
    )
    return weights


_TORCHVISION_FILE = re.compile(r"^densenet121-[0-9a-f]{8}\.pth$")  # torchvision's download names

IMPORTER = register(
    Importer(
        name="torchvision",
        title="torchvision (ImageNet)",
        suffixes=(".pth", ".pt"),
        detect=lambda path: bool(_TORCHVISION_FILE.match(path.name)),
        preprocessing=lambda request: imagenet_preprocessing(request.size),
        read=_read,
        ignore=("classifier.weight", "classifier.bias"),
    )
)
