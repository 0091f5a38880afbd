"""``cxrdx train --init``: DenseNet features from an imported init, a checkpoint or a torchvision file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cxrdx.errors import CheckpointError
from cxrdx.files import is_torch_pickle
from cxrdx.model.checkpoint import read_checkpoint, state_dict_problems
from cxrdx.model.importers.torchvision import map_torchvision_key, strip_prefixes
from cxrdx.model.pickle_reader import extract_state_dict, load_torch_file


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
        if is_torch_pickle(head):  # not safetensors
            obj, _ = load_torch_file(path, trust_pickle=False)
            state, _ = extract_state_dict(obj, name)
        else:
            state, _ = read_checkpoint(path)
    features: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        plain = strip_prefixes(key)
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
