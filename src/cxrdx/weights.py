"""`cxrdx import`: turn public DenseNet121 chest X-ray weights into cxrdx checkpoints.

Every well-known chest X-ray model is a DenseNet121, but each ships in its own
layout: torchvision key names (old ``norm.1`` style or new ``norm1``), DataParallel
``module.`` prefixes, a CheXNet wrapper with a ``Sequential(Linear, Sigmoid)`` head,
torchxrayvision's 18 outputs in its own order, Keras HDF5 files with HWIO kernels.
Loading them by hand is where people silently end up with random weights
(``strict=False``), shuffled labels or the wrong input range. Here each tensor is
mapped by name, every shape is checked, anything left over on either side is an
error that lists it, and the checkpoint records the label mapping and the exact
preprocessing the source expects, so predict, evaluate, explain and serve feed it
the input it was trained on.

Pickles are read with ``torch.load(weights_only=True)``. A file that holds a whole
pickled model (torchxrayvision's release files do) needs full unpickling, which can
run code embedded in the file; that is refused unless ``--trust-pickle`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import types
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrdx.errors import CheckpointError, ConfigError
from cxrdx.labels import FINDINGS, canonical, is_finding
from cxrdx.model import (
    ARCHITECTURES,
    CheckpointMeta,
    build_model,
    check_state_dict,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    state_dict_problems,
)
from cxrdx.preprocess import Preprocessing

KINDS = ("torchvision", "chexnet", "xrv", "keras", "cxrdx")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KERAS_BN_EPS = 1.001e-5
TORCH_BN_EPS = 1e-5

# Output order of arnoweng/CheXNet (CLASS_NAMES in its model.py) and of the Keras
# reimplementation brucechou1983/CheXNet-Keras (class_names in its config): NIH's order.
CHEXNET_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
KERAS_LABELS = CHEXNET_LABELS

# torchxrayvision's DenseNet outputs (xrv.datasets.default_pathologies / DenseNet.targets).
XRV_PATHOLOGIES = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
    "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
    "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)  # fmt: skip
_NAN = math.nan
# Which of the 18 outputs each published xrv DenseNet121 was trained on, and its operating
# points (sigmoid value at which xrv's op_norm maps to 0.5), as published in
# torchxrayvision's models.py ``model_urls``. Keyed by the release file name's prefix.
XRV_VARIANTS: dict[str, dict] = {
    "all": {
        "file_prefix": "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121",
        "present": tuple(range(18)),
        "op_threshs": (0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358,
                       0.010060724, 0.103246614, 0.056810737, 0.026791653, 0.050318155, 0.023985857,
                       0.01939503, 0.042889766, 0.053369623, 0.035975814, 0.20204692, 0.05015312),
    },
    "nih": {
        "file_prefix": "nih-densenet121",
        "present": tuple(range(14)),
        "op_threshs": (0.039117552, 0.0034529066, 0.11396341, 0.0057298196, 0.00045666535, 0.0018880932,
                       0.012037827, 0.038744126, 0.0037213727, 0.014730946, 0.016149804, 0.054241467,
                       0.037198864, 0.0004403434, _NAN, _NAN, _NAN, _NAN),
    },
    "pc": {
        "file_prefix": "pc-densenet121",
        "present": (*range(14), 15),
        "op_threshs": (0.031012505, 0.013347598, 0.081435576, 0.001262615, 0.002587246, 0.0035944257,
                       0.0023071, 0.055412333, 0.044385884, 0.042766232, 0.043258056, 0.037629247,
                       0.005658899, 0.0091741895, _NAN, 0.026507627, _NAN, _NAN),
    },
    "chex": {
        "file_prefix": "chex-densenet121",
        "present": (0, 1, 3, 4, 7, 8, 10, 14, 15, 16, 17),
        "op_threshs": (0.1988969, 0.05710573, _NAN, 0.0531293, 0.1435217, _NAN, _NAN, 0.27212676,
                       0.07749717, _NAN, 0.19712369, _NAN, _NAN, _NAN, 0.09932402, 0.09273402,
                       0.3270967, 0.10888247),
    },
    "rsna": {
        "file_prefix": "kaggle-densenet121",
        "present": (8, 16),
        "op_threshs": (*[_NAN] * 8, 0.13486601, *[_NAN] * 7, 0.13511065, _NAN),
    },
    "mimic_nb": {
        "file_prefix": "mimic_nb-densenet121",
        "present": (0, 1, 3, 4, 7, 8, 10, 14, 15, 16, 17),
        "op_threshs": (0.08558747, 0.011884617, _NAN, 0.0040595434, 0.010733786, _NAN, _NAN, 0.118761964,
                       0.022924708, _NAN, 0.06358637, _NAN, _NAN, _NAN, 0.022143636, 0.017476924,
                       0.1258702, 0.014020768),
    },
    "mimic_ch": {
        "file_prefix": "mimic_ch-densenet121",
        "present": (0, 1, 3, 4, 7, 8, 10, 14, 15, 16, 17),
        "op_threshs": (0.09121389, 0.010573786, _NAN, 0.005023008, 0.003698257, _NAN, _NAN, 0.08001232,
                       0.037242252, _NAN, 0.05006329, _NAN, _NAN, _NAN, 0.019866971, 0.03823637,
                       0.11303808, 0.0069147074),
    },
}  # fmt: skip


@dataclass
class ImportResult:
    """What `import_weights` wrote, for the CLI summary and for tests."""

    out: Path
    meta: CheckpointMeta
    mapped_tensors: int
    notes: list[str] = field(default_factory=list)


def is_init_only(meta: CheckpointMeta) -> bool:
    """True for an ImageNet initialisation (``--from torchvision``): train on it, never predict with it."""
    return bool(meta.provenance.get("init_only"))


# ----------------------------------------------------------------------------- reading pickles


class _Inert:
    """Stands in for every class a pickled model names: it keeps the state and runs nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._inert_args = args

    def __setstate__(self, state: object) -> None:
        if (
            isinstance(state, tuple)
            and len(state) == 2
            and all(s is None or isinstance(s, dict) for s in state)
        ):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


# Only what rebuilds tensors and plain containers is resolved for real; everything else
# (model classes, and any function a malicious file names) becomes an inert record.
_REAL_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("builtins", "set"),
    ("builtins", "object"),
    ("copyreg", "_reconstructor"),
}


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol 2 names
        if (module, name) in _REAL_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return type(name, (_Inert,), {"__module__": f"cxrdx.inert.{module}"})


_INERT_PICKLE = types.SimpleNamespace(
    __name__="cxrdx_inert_pickle",
    Unpickler=_InertUnpickler,
    load=lambda fh, **kw: _InertUnpickler(fh, **kw).load(),
)


def _unsupported_globals(message: str) -> list[str]:
    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", message)))


def load_torch_file(path: Path, trust_pickle: bool = False) -> tuple[object, list[str]]:
    """A pickled PyTorch file's object, read with ``weights_only=True`` unless trusted."""
    notes: list[str] = []
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    from safetensors import SafetensorError  # torch.load reads a *.safetensors name with safetensors

    try:
        return torch.load(path, map_location="cpu", weights_only=True), notes
    except pickle.UnpicklingError as exc:
        names = _unsupported_globals(str(exc))
        if not trust_pickle:
            named = f" (it names {', '.join(names[:6])})" if names else ""
            raise CheckpointError(
                f"{path}: this file holds a whole pickled Python object{named}, not just tensors. "
                "Loading it needs full unpickling, which can run any code hidden in the file. Rerun with "
                "--trust-pickle only if you trust where the file came from, or re-save it where it loads as "
                "`torch.save(model.state_dict(), 'weights.pt')` and import that."
            ) from None
        notes.append(
            f"fully unpickled (--trust-pickle); the file names {', '.join(names) or 'custom objects'}"
        )
    except (RuntimeError, EOFError, OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch file ({exc}); it may be truncated or corrupt"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False), notes
    except (ImportError, AttributeError) as exc:
        # The model's own package (e.g. torchxrayvision) is not installed here: read the
        # tensors structurally instead, without importing or running anything from the file.
        notes.append(f"classes not importable here ({exc}); tensors read structurally without running them")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(
                path, map_location="cpu", weights_only=False, pickle_module=_INERT_PICKLE
            ), notes
        except Exception as exc:  # noqa: BLE001 - any failure here means the file cannot be read
            raise CheckpointError(
                f"{path}: could not read the pickled model ({type(exc).__name__}: {exc})"
            ) from None


def _module_tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a module (real or inert), by state_dict name."""
    state = getattr(obj, "__dict__", {})
    out: dict[str, torch.Tensor] = {}
    skip = state.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset, list, tuple)) else ()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skip:
                out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(_module_tensors(child, f"{prefix}{name}."))
    return out


def _is_module(obj: object) -> bool:
    return isinstance(obj, nn.Module) or "_modules" in getattr(obj, "__dict__", {})


def extract_state_dict(obj: object, source: str) -> tuple[dict[str, torch.Tensor], object]:
    """The tensors of a loaded file (state_dict, training checkpoint dict or whole model), and the model object."""
    if _is_module(obj):
        return _module_tensors(obj), obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            inner = obj.get(key)
            if _is_module(inner):
                return _module_tensors(inner), inner
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner), None
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return tensors, None
        keys = ", ".join(map(repr, list(obj)[:10]))
        raise CheckpointError(f"{source}: a dict without a state_dict in it (top-level keys: {keys})")
    raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state_dict or a model")


# ----------------------------------------------------------------------------- key mapping

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


def _strip_prefixes(key: str) -> str:
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
    key = _strip_prefixes(key)
    if m := _TV_DENSE.match(key):
        block, layer, kind, n, param = m.groups()
        return f"features.denseblock{block}.denselayer{layer}.layers.{kind}{n}.{param}"
    if _TV_SAME.match(key):
        return key
    if m := _TV_HEAD.match(key):
        return f"class_layers.out.{m.group(1)}"
    return None


def _map_torch_state(
    state: dict[str, torch.Tensor], ignore: Iterable[str] = ()
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map every key; returns (cxrdx-named tensors, source keys that map to nothing)."""
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    ignore = set(ignore)
    for key, value in state.items():
        if _strip_prefixes(key) in ignore:
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


def _select_head(
    mapped: dict[str, torch.Tensor], source_labels: list[str], source: str, output_names: Iterable[str] = ()
) -> tuple[list[str], dict[str, int], list[str]]:
    """Reorder the classifier rows into FINDINGS order by name; returns (labels, mapping, dropped)."""
    weight = mapped.get("class_layers.out.weight")
    bias = mapped.get("class_layers.out.bias")
    if weight is None or bias is None:
        raise CheckpointError(f"{source}: no classifier (Linear) weights found; is --from right?")
    if weight.ndim != 2 or weight.shape[0] != len(source_labels) or bias.shape != (weight.shape[0],):
        raise CheckpointError(
            f"{source}: the classifier has {weight.shape[0]} outputs (weight {tuple(weight.shape)}, bias "
            f"{tuple(bias.shape)}) but {len(source_labels)} source labels were given: {source_labels}"
        )
    index: dict[str, int] = {}
    dropped: list[str] = []
    output_names = list(output_names)
    for i, name in enumerate(source_labels):
        if name and is_finding(name):
            ours = canonical(name)
            if ours in index:
                raise CheckpointError(f"{source}: source labels name {ours} twice: {source_labels}")
            index[ours] = i
        elif name:
            dropped.append(name)
        else:
            known = output_names[i] if i < len(output_names) else f"output {i}"
            dropped.append(f"{known} (not trained in these weights)")
    if not index:
        raise CheckpointError(f"{source}: none of the source outputs is one of ours ({', '.join(FINDINGS)})")
    labels = [name for name in FINDINGS if name in index]
    rows = torch.tensor([index[name] for name in labels])
    mapped["class_layers.out.weight"] = weight[rows].clone()
    mapped["class_layers.out.bias"] = bias[rows].clone()
    return labels, {name: index[name] for name in labels}, dropped


def _fit_architecture(
    mapped: dict[str, torch.Tensor],
    unmapped: list[str],
    num_classes: int,
    in_channels: int,
    bn_eps: float,
    source: str,
) -> tuple[str, nn.Module, dict[str, torch.Tensor], list[str]]:
    """The registry architecture whose keys and shapes match exactly; else an error listing every difference."""
    notes: list[str] = []
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in mapped.items()}
    best: tuple[int, str, nn.Module, dict] | None = None
    for arch in ARCHITECTURES:
        model = build_model(arch, num_classes, in_channels, bn_eps)
        expected = model.state_dict()
        filled = dict(state)
        added = [k for k in expected if k.endswith("num_batches_tracked") and k not in filled]
        for k in added:
            filled[k] = torch.zeros((), dtype=torch.long)
        same = sum(k in filled and tuple(filled[k].shape) == tuple(v.shape) for k, v in expected.items())
        if same == len(expected) == len(filled) and not unmapped:
            if added:
                notes.append(
                    f"{len(added)} BatchNorm num_batches_tracked counters absent in the source set to 0"
                )
            return arch, model, filled, notes
        if best is None or same > best[0]:
            best = (same, arch, model, filled)
    assert best is not None
    _, arch, model, filled = best
    problems = []
    try:
        check_state_dict(model, filled, source)
    except CheckpointError as exc:
        problems.append(str(exc))
    if unmapped:
        shown = ", ".join(unmapped[:8]) + (f" ... (+{len(unmapped) - 8} more)" if len(unmapped) > 8 else "")
        problems.append(f"{len(unmapped)} source tensors map to nothing in cxrdx's DenseNet: {shown}")
    raise CheckpointError(
        f"{source}: does not match {arch} (closest of {', '.join(ARCHITECTURES)}): "
        + "; ".join(problems)
        + ". Check that --from names the right kind of file; nothing was written."
    )


# ----------------------------------------------------------------------------- keras


def _h5_str(value: object) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_keras_h5(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Legacy Keras HDF5 (Keras 2 ``model.save``/``save_weights``, Keras 3 ``model.save('x.h5')``).

    Returns ({layer name with '/' as '_': {weight kind: array}}, model config or {}).
    """
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({exc})") from None
    with fh:
        group = fh.get("model_weights", fh)
        if "layer_names" not in group.attrs:
            hint = (
                " It looks like a Keras 3 `.weights.h5` file, which stores layers by class and position, "
                "not by name; re-save the model with `model.save('model.h5')` and import that."
                if "layers" in fh and "vars" in fh
                else ""
            )
            raise CheckpointError(f"{path}: not a Keras HDF5 weights file (no layer_names).{hint}")
        layers: dict[str, dict[str, np.ndarray]] = {}
        for raw in group.attrs["layer_names"]:
            name = _h5_str(raw)
            layer = group[name]
            weights: dict[str, np.ndarray] = {}
            for wraw in layer.attrs.get("weight_names", []):
                wname = _h5_str(wraw)
                kind = wname.rsplit("/", 1)[-1].split(":")[0]
                weights[kind] = np.asarray(layer[wname][()])
            if weights:
                layers[name.replace("/", "_")] = weights
        config = {}
        if "model_config" in fh.attrs:
            try:
                config = json.loads(_h5_str(fh.attrs["model_config"]))
            except json.JSONDecodeError:
                config = {}
    return layers, config


_KERAS_BN = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
_KERAS_LAYER = re.compile(r"^conv(\d+)_block(\d+)_(0_bn|1_conv|1_bn|2_conv)$")
_KERAS_POOL = re.compile(r"^pool(\d+)_(bn|conv)$")
_KERAS_DENSE_PART = {"0_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2"}


def _keras_target(layer: str) -> str | None:
    if layer == "conv1_conv":
        return "features.conv0"
    if layer == "conv1_bn":
        return "features.norm0"
    if layer == "bn":
        return "features.norm5"
    if m := _KERAS_LAYER.match(layer):
        stage, block, part = m.groups()
        return f"features.denseblock{int(stage) - 1}.denselayer{block}.layers.{_KERAS_DENSE_PART[part]}"
    if m := _KERAS_POOL.match(layer):
        stage, part = m.groups()
        return f"features.transition{int(stage) - 1}.{'norm' if part == 'bn' else 'conv'}"
    return None


def _keras_layer_configs(config: dict) -> dict[str, dict]:
    found: dict[str, dict] = {}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            cfg = node.get("config")
            if "class_name" in node and isinstance(cfg, dict) and "name" in cfg:
                found[str(cfg["name"]).replace("/", "_")] = {"class_name": node["class_name"], **cfg}
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def _map_keras(
    layers: dict[str, dict[str, np.ndarray]], config: dict, source: str
) -> tuple[dict[str, torch.Tensor], list[str], float, list[str]]:
    """Keras layer weights -> (cxrdx-named tensors incl. head in source order, unmapped, bn eps, notes)."""
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    notes: list[str] = []
    dense = [n for n, w in layers.items() if set(w) == {"kernel", "bias"} and w["kernel"].ndim == 2]
    if len(dense) != 1:
        raise CheckpointError(
            f"{source}: expected exactly one Dense layer (the classifier on DenseNet121's pooled features), "
            f"found {len(dense)}: {dense}. Per-finding heads or extra Dense layers are not a CheXNet layout."
        )
    configs = _keras_layer_configs(config)
    head_cfg = configs.get(dense[0], {})
    activation = head_cfg.get("activation")
    if activation is not None:
        if activation not in ("sigmoid", "linear"):
            raise CheckpointError(
                f"{source}: the classifier {dense[0]!r} uses {activation!r}; only sigmoid (multi-label) "
                "outputs can be imported"
            )
        notes.append(f"classifier {dense[0]!r} activation {activation}; cxrdx applies sigmoid to its logits")
    eps_values = {
        float(c["epsilon"]) for c in configs.values() if c.get("class_name") == "BatchNormalization"
    }
    bn_eps = eps_values.pop() if len(eps_values) == 1 else KERAS_BN_EPS
    for layer, weights in layers.items():
        if layer == dense[0]:
            mapped["class_layers.out.weight"] = torch.from_numpy(np.ascontiguousarray(weights["kernel"].T))
            mapped["class_layers.out.bias"] = torch.from_numpy(np.ascontiguousarray(weights["bias"]))
            continue
        target = _keras_target(layer)
        if target is None:
            unmapped.extend(f"{layer}/{kind}" for kind in weights)
            continue
        for kind, array in weights.items():
            if target.endswith(("conv0", "conv1", "conv2", ".conv")) and kind == "kernel" and array.ndim == 4:
                # Keras HWIO -> torch OIHW
                mapped[f"{target}.weight"] = torch.from_numpy(
                    np.ascontiguousarray(array.transpose(3, 2, 0, 1))
                )
            elif (
                kind in _KERAS_BN
                and array.ndim == 1
                and not target.endswith(("conv0", "conv1", "conv2", ".conv"))
            ):
                mapped[f"{target}.{_KERAS_BN[kind]}"] = torch.from_numpy(np.ascontiguousarray(array))
            else:
                unmapped.append(f"{layer}/{kind}")
    return mapped, sorted(unmapped), bn_eps, notes


# ----------------------------------------------------------------------------- import


def _preprocessing(kind: str, size: int | None) -> Preprocessing:
    if kind == "xrv":
        return Preprocessing(
            size=size or 224, channels=1, pixel_range=(-1024.0, 1024.0), mean=(0.0,), std=(1.0,)
        )
    return Preprocessing(
        size=size or 224, channels=3, pixel_range=(0.0, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD
    )


def _parse_labels(text: str | Iterable[str] | None) -> list[str] | None:
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    return [item.strip() for item in items]


def _xrv_variant(name: str | None, path: Path) -> str | None:
    if name:
        key = name.removeprefix("densenet121-res224-")
        key = {"kaggle": "rsna"}.get(key, key)
        if key not in XRV_VARIANTS:
            raise ConfigError(f"--xrv-weights {name!r} is unknown; known: {', '.join(XRV_VARIANTS)}")
        return key
    file = path.name
    matches = [k for k, v in XRV_VARIANTS.items() if file.startswith(v["file_prefix"])]
    return max(matches, key=lambda k: len(XRV_VARIANTS[k]["file_prefix"])) if matches else None


def _xrv_labels(
    state: dict[str, torch.Tensor],
    model_obj: object,
    variant: str | None,
    given: list[str] | None,
    source: str,
) -> tuple[list[str], list[float] | None, list[str]]:
    """(18-entry source label list, '' for untrained outputs; op thresholds or None; notes)."""
    notes: list[str] = []
    labels: list[str] | None = given
    if labels is None and variant is not None:
        present = set(XRV_VARIANTS[variant]["present"])
        labels = [name if i in present else "" for i, name in enumerate(XRV_PATHOLOGIES)]
        notes.append(f"torchxrayvision weights {variant!r} (densenet121-res224-{variant})")
    if labels is None:
        attrs = getattr(model_obj, "__dict__", {})
        for attr in ("targets", "pathologies"):
            value = attrs.get(attr)
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                labels = list(value)
                notes.append(f"output names read from the model's {attr!r} attribute")
                break
    if labels is None:
        raise CheckpointError(
            f"{source}: cannot tell which torchxrayvision weights this is from the file name; give "
            f"--xrv-weights NAME (one of {', '.join(XRV_VARIANTS)}, e.g. nih for densenet121-res224-nih) or "
            "--source-labels with the 18 output names in order"
        )
    op = state.get("op_threshs")
    thresholds: list[float] | None = None
    if isinstance(op, torch.Tensor) and op.numel() == len(labels):
        thresholds = [float(v) for v in op.flatten()]
        notes.append("operating thresholds taken from the file's op_threshs buffer")
    elif variant is not None:
        thresholds = list(XRV_VARIANTS[variant]["op_threshs"])
        notes.append(f"operating thresholds: torchxrayvision's published op_threshs for {variant!r}")
    return labels, thresholds, notes


def import_weights(
    kind: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    trust_pickle: bool = False,
    size: int | None = None,
    source_labels: str | Iterable[str] | None = None,
    xrv_weights: str | None = None,
) -> ImportResult:
    """Convert ``source`` (a file of the given ``kind``) into a cxrdx checkpoint at ``out``."""
    if kind not in KINDS:
        raise ConfigError(f"--from {kind!r} is unknown; choose one of {', '.join(KINDS)}")
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    out = Path(out)
    if out.resolve() == path.resolve():
        raise ConfigError(f"--out {out} is the source file itself; choose another output path")
    labels_given = _parse_labels(source_labels)
    sha = file_sha256(path)
    notes: list[str] = []

    if kind == "cxrdx":
        model, meta = load_checkpoint(path)
        if size:
            meta.preprocessing.size = size
        meta.source = {**meta.source, "kind": meta.source.get("kind", "cxrdx"), "revalidated_from": path.name,
                       "revalidated_sha256": sha}  # fmt: skip
        meta = CheckpointMeta.from_json(meta.to_json())
        save_checkpoint(out, model, meta)
        load_checkpoint(out)
        return ImportResult(out, meta, len(model.state_dict()), ["validated and re-saved"])

    thresholds: dict[str, float] | None = None
    threshold_method: str | None = None
    provenance: dict = {"imported_from": path.name}
    if kind == "keras":
        layers, config = read_keras_h5(path)
        mapped, unmapped, bn_eps, extra = _map_keras(layers, config, str(path))
        notes += extra
        src_labels = labels_given or list(KERAS_LABELS)
    else:
        obj, extra = load_torch_file(path, trust_pickle)
        notes += extra
        state, model_obj = extract_state_dict(obj, str(path))
        bn_eps = TORCH_BN_EPS
        ignore = ["op_threshs"] if kind == "xrv" else []
        if kind == "torchvision":
            ignore += ["classifier.weight", "classifier.bias"]
        mapped, unmapped = _map_torch_state(state, ignore)
        if kind == "torchvision":
            src_labels = []
        elif kind == "chexnet":
            src_labels = labels_given or list(CHEXNET_LABELS)
        else:
            variant = _xrv_variant(xrv_weights, path)
            stripped = {_strip_prefixes(k): v for k, v in state.items()}
            src_labels, op, extra = _xrv_labels(stripped, model_obj, variant, labels_given, str(path))
            notes += extra
            if op is not None:
                thresholds = {}
                for i, name in enumerate(src_labels):
                    if name and is_finding(name) and not math.isnan(op[i]):
                        thresholds[canonical(name)] = float(op[i])
                threshold_method = "torchxrayvision op_threshs (positive when probability >= threshold)"

    conv0 = mapped.get("features.conv0.weight")
    if conv0 is None or conv0.ndim != 4:
        raise CheckpointError(
            f"{path}: no first convolution (features.conv0 / conv1/conv) found; is --from right?"
        )
    in_channels = int(conv0.shape[1])
    preprocessing = _preprocessing(kind, size)
    if in_channels != preprocessing.channels:
        hint = " (torchxrayvision models take 1 channel: use --from xrv)" if in_channels == 1 else ""
        raise CheckpointError(
            f"{path}: the first convolution takes {in_channels} channel(s) but --from {kind} models take "
            f"{preprocessing.channels}{hint}"
        )

    if kind == "torchvision":
        labels = list(FINDINGS)
        label_mapping: dict[str, int] = {}
        dropped = ["ImageNet classifier (1000 classes)"]
        norm5 = mapped.get("features.norm5.weight")
        width = int(norm5.shape[0]) if norm5 is not None else 1024
        generator = torch.Generator().manual_seed(0)  # the same init every time the same file is imported
        bound = 1.0 / math.sqrt(width)
        mapped["class_layers.out.weight"] = (
            torch.rand(len(labels), width, generator=generator) * 2 - 1
        ) * bound
        mapped["class_layers.out.bias"] = torch.zeros(len(labels))
        provenance["init_only"] = True
        notes.append("ImageNet features only; the 14-finding head is freshly initialised: train before use")
    else:
        names = XRV_PATHOLOGIES if kind == "xrv" and len(src_labels) == len(XRV_PATHOLOGIES) else ()
        labels, label_mapping, dropped = _select_head(mapped, src_labels, str(path), names)
    if thresholds is not None:
        thresholds = {name: thresholds[name] for name in labels if name in thresholds} or None
        if thresholds is None:
            threshold_method = None

    arch, model, state, extra = _fit_architecture(
        mapped, unmapped, len(labels), in_channels, bn_eps, str(path)
    )
    notes += extra
    model.load_state_dict(state, strict=True)
    meta = CheckpointMeta(
        architecture=arch,
        labels=labels,
        in_channels=in_channels,
        bn_eps=bn_eps,
        preprocessing=preprocessing,
        thresholds=thresholds,
        threshold_method=threshold_method,
        provenance=provenance,
        source={
            "kind": kind,
            "file": path.name,
            "sha256": sha,
            "label_mapping": label_mapping,
            "source_labels": src_labels,
            "dropped_outputs": dropped,
            "notes": notes,
        },
    )
    save_checkpoint(out, model, meta)
    load_checkpoint(out)  # what we wrote must load exactly
    return ImportResult(out, meta, len(state), notes)


def load_init_features(source: str | os.PathLike | dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Load DenseNet ``features.*`` from an imported init, any cxrdx checkpoint, a torchvision ``.pth`` or a
    state dict into ``model``; the classifier head is left as it is. Returns the loaded keys.

    Every feature tensor of the model must be present with the same shape, and nothing else may be
    in the source's features: a partial load would leave random layers without anyone noticing.
    """
    module = model.module if hasattr(model, "module") else model
    module = getattr(module, "_orig_mod", module)
    name = "the given state dict"
    if isinstance(source, dict):
        state = dict(source)
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such initialisation file")
        with open(path, "rb") as fh:
            head = fh.read(16)
        if (head[:2] == b"PK" or head[:1] == b"\x80") and head[8:9] != b"{":  # not safetensors
            obj, _ = load_torch_file(path, trust_pickle=False)
            state, _ = extract_state_dict(obj, name)
        else:
            state, _ = read_checkpoint(path)
    features: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        plain = _strip_prefixes(key)
        new = plain if ".layers." in plain else map_torchvision_key(key)
        if new is None and plain.startswith("features."):
            new = plain  # an unknown feature tensor: reported as unexpected below
        if new is not None and new.startswith("features."):
            if new in features:
                raise CheckpointError(
                    f"{name}: two tensors map to {new} (one is {key}); the file is ambiguous"
                )
            features[new] = value
    expected = {k: v for k, v in module.state_dict().items() if k.startswith("features.")}
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in features:
            features[key] = torch.zeros((), dtype=torch.long)
    problems = state_dict_problems(expected, features)
    if problems:
        raise CheckpointError(
            f"{name}: its DenseNet features do not fit this network; "
            + "; ".join(problems)
            + ". Use an init imported for the same architecture and input channels."
        )
    full = module.state_dict()
    full.update({k: v.to(full[k].dtype) for k, v in features.items()})
    module.load_state_dict(full, strict=True)
    return sorted(features)


# ----------------------------------------------------------------------------- CLI


def _summary(result: ImportResult) -> str:
    meta = result.meta
    src = meta.source
    pre = meta.preprocessing
    lines = [
        f"imported {src.get('kind')} weights from {src.get('file', '?')} -> {result.out}",
        f"  sha256: {src.get('sha256', '?')}",
        f"  network: {meta.architecture}, {meta.in_channels} input channel(s), BatchNorm eps {meta.bn_eps:g}, "
        f"{result.mapped_tensors} tensors mapped by name, every shape checked",
        f"  input: {pre.size} px letterboxed, {pre.channels} channel(s), pixel range "
        f"[{pre.pixel_range[0]:g}, {pre.pixel_range[1]:g}], mean {list(pre.mean)}, std {list(pre.std)}",
    ]
    if src.get("label_mapping"):
        pairs = ", ".join(f"{name}<-{i}" for name, i in src["label_mapping"].items())
        lines.append(f"  outputs ({len(meta.labels)}, ours <- source index): {pairs}")
    if src.get("dropped_outputs"):
        lines.append(f"  dropped source outputs: {', '.join(src['dropped_outputs'])}")
    if meta.thresholds:
        lines.append(f"  thresholds: {len(meta.thresholds)} kept ({meta.threshold_method})")
    for note in result.notes:
        lines.append(f"  note: {note}")
    if is_init_only(meta):
        lines.append(f"next: train on it with `cxrdx train --init {result.out} ...` (it cannot predict yet)")
    else:
        lines.append(
            f"next: check it on your own test split with `cxrdx evaluate --weights {result.out} --data DATA "
            f"--out REPORT_DIR` (which can also choose thresholds), then `cxrdx predict --weights {result.out} IMAGE`"
        )
    return "\n".join(lines)


def run_import(args: argparse.Namespace) -> int:
    result = import_weights(
        args.kind,
        args.source,
        args.out,
        trust_pickle=args.trust_pickle,
        size=args.size,
        source_labels=args.source_labels,
        xrv_weights=args.xrv_weights,
    )
    print(_summary(result))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="convert public DenseNet121 weights (torchvision, CheXNet, torchxrayvision, Keras) to a checkpoint",
        description="Convert pretrained DenseNet121 weights into a cxrdx checkpoint (.safetensors + metadata). "
        "Every tensor is mapped by name and shape-checked; the label order and the preprocessing the "
        "source expects are recorded so predict/evaluate/explain/serve use it correctly.",
    )
    parser.add_argument("--from", dest="kind", required=True, choices=KINDS, help="layout of SOURCE")
    parser.add_argument(
        "source", metavar="SOURCE", help="the weights file (.pth, .pth.tar, .pt, .h5, .safetensors)"
    )
    parser.add_argument("--out", required=True, metavar="CKPT", help="where to write the cxrdx checkpoint")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling of files that hold a whole pickled model; it can run code from the file",
    )
    parser.add_argument("--size", type=int, default=None, help="input size in px to record (default: 224)")
    parser.add_argument(
        "--source-labels",
        default=None,
        metavar="NAMES",
        help="comma-separated names of the source's outputs in order, if not the kind's default",
    )
    parser.add_argument(
        "--xrv-weights",
        default=None,
        metavar="NAME",
        help=f"which torchxrayvision DenseNet121 ({', '.join(XRV_VARIANTS)}) when the file name does not tell",
    )
    parser.set_defaults(func=run_import)
