"""Keras DenseNet121 HDF5 files (e.g. brucechou1983/CheXNet-Keras): layer names, HWIO kernels.

Legacy Keras HDF5 (Keras 2 ``model.save``/``save_weights``, Keras 3 ``model.save('x.h5')``)
stores weights by layer name; ``keras.applications.DenseNet121``'s names map onto ours
one to one. Kernels are transposed HWIO -> OIHW; BatchNorm's eps (1.001e-5 in Keras)
is read from the model config when present and recorded in the checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from cxrdx.errors import CheckpointError, ConfigError
from cxrdx.files import head_bytes
from cxrdx.imaging.preprocessing import LEGACY, Preprocessing
from cxrdx.model.importers.chexnet import CHEXNET_LABELS
from cxrdx.model.importers.registry import Importer, Request, SourceWeights, register
from cxrdx.model.importers.torchvision import IMAGENET_MEAN, IMAGENET_STD

KERAS_BN_EPS = 1.001e-5
KERAS_LABELS = CHEXNET_LABELS  # brucechou1983/CheXNet-Keras keeps CheXNet's (NIH's) output order


KERAS_NORMS = ("imagenet", "per-image", "MEAN,STD")
NOTEBOOK_SIZE = 320  # the course notebook's generators: target_size=(320, 320)
KERAS_STD_EPS = 1e-6  # ImageDataGenerator.standardize: x / (std + 1e-6)


def keras_preprocessing(size: int | None, norm: str | None) -> Preprocessing:
    """What the Keras model was fed at test time.

    ``imagenet`` (default; brucechou1983/CheXNet-Keras): [0, 1], ImageNet mean/std, letterboxed as
    cxrdx always fed it (its own skimage resize in "reflect" mode is not reproduced).
    ``per-image`` and ``MEAN,STD``: the course notebook's ``ImageDataGenerator``: ``load_img``
    (converted to RGB, stretched to 320 x 320 with nearest neighbour), pixels in [0, 255], then
    ``samplewise_center`` + ``samplewise_std_normalization`` (per image) or ``featurewise_*`` with
    the training sample's MEAN and STD (x - MEAN) / (STD + 1e-6).
    """
    norm = norm or "imagenet"
    if norm == "imagenet":
        return Preprocessing(
            size=size or 224, channels=3, pixel_range=(0.0, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD,
            resize=LEGACY, bits=None,
        )  # fmt: skip
    notebook = {"size": size or NOTEBOOK_SIZE, "channels": 3, "pixel_range": (0.0, 255.0),
                "fit": "stretch", "resize": "nearest", "bits": 8}  # fmt: skip
    if norm == "per-image":
        return Preprocessing(**notebook, normalization="per_image")
    try:
        mean, std = (float(v) for v in norm.split(","))
    except ValueError:
        raise ConfigError(
            f"--keras-norm {norm!r}: give imagenet, per-image, or the training sample's MEAN,STD in 0-255 units"
        ) from None
    return Preprocessing(**notebook, mean=(mean,), std=(std + KERAS_STD_EPS,))


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


def map_keras(
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


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _read(request: Request) -> SourceWeights:
    layers, config = read_keras_h5(request.path)
    mapped, unmapped, bn_eps, notes = map_keras(layers, config, str(request.path))
    return SourceWeights(
        mapped, unmapped, bn_eps, labels=request.source_labels or list(KERAS_LABELS), notes=notes
    )


IMPORTER = register(
    Importer(
        name="keras",
        title="Keras HDF5 (e.g. brucechou1983/CheXNet-Keras)",
        suffixes=(".h5", ".hdf5"),
        detect=lambda path: head_bytes(path, len(HDF5_SIGNATURE)) == HDF5_SIGNATURE,
        preprocessing=lambda request: keras_preprocessing(request.size, request.keras_norm),
        read=_read,
        options=("keras_norm",),
    )
)
