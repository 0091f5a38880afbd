"""The network registry: DenseNet121 for 14 findings, and a tiny twin for tests.

The network is MONAI's DenseNet: ``features`` (conv0 ... denseblock4, norm5) then
``class_layers`` = ReLU -> global average pool -> flatten -> Linear(1024, 14). It
returns logits; sigmoid is applied outside so the loss works on logits and
Grad-CAM sees the features. ``GRADCAM_LAYER`` names the last feature map
(the activated output of the last dense block, after norm5).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cxrdx.errors import CheckpointError
from cxrdx.labels import FINDINGS

GRADCAM_LAYER = "class_layers.relu"
FEATURES_LAYER = "class_layers.flatten"  # the pooled features the classifier reads (1024 for DenseNet121)
# Children of ``model.features`` whose output is average-pooled for the out-of-distribution score, beside
# FEATURES_LAYER (cxrdx.model.ood): the stem and the first three dense blocks (64, 256, 512, 1024 channels
# for DenseNet121), where low-level differences (noise, inversion, other modalities) show.
OOD_TAPS = ("pool0", "denseblock1", "denseblock2", "denseblock3")


def _densenet121(in_channels: int, num_classes: int) -> nn.Module:
    from monai.networks.nets import DenseNet  # MONAI's import is slow: only when a network is built

    return DenseNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)


def _densenet_tiny(in_channels: int, num_classes: int) -> nn.Module:
    # Same layer names and structure as DenseNet121, a fraction of the cost: for tests.
    from monai.networks.nets import DenseNet

    return DenseNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_classes,
        init_features=16,
        growth_rate=8,
        block_config=(2, 2, 2, 2),
        bn_size=2,
    )


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "densenet121": _densenet121,
    "densenet-tiny": _densenet_tiny,
}


def build_model(
    architecture: str = "densenet121",
    num_classes: int = len(FINDINGS),
    in_channels: int = 3,
    bn_eps: float = 1e-5,
) -> nn.Module:
    """A freshly initialised network from the registry."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise CheckpointError(
            f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}"
        ) from None
    model = factory(in_channels, num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = bn_eps
    return model


def features_and_logits(model: nn.Module, x):
    """One forward pass -> (pooled features (N, F), logits (N, L)); the logits equal ``model(x)``.

    The features are ``FEATURES_LAYER``: ReLU(norm5(...)) globally average-pooled, the
    vector the final Linear reads (the out-of-distribution score works on it).
    """
    head = model.class_layers
    features = head.flatten(head.pool(head.relu(model.features(x))))
    return features, head.out(features)


def depth_parts(model: nn.Module, x) -> tuple[list, object]:
    """One forward pass -> (the pooled features of each depth, a list; logits (N, L)).

    The global average of each ``OOD_TAPS`` output, in that order, then ``FEATURES_LAYER``
    (what ``features_and_logits`` gives) last.
    """
    pooled = []
    h = x
    for name, module in model.features.named_children():
        h = module(h)
        if name in OOD_TAPS:
            pooled.append(h.mean((2, 3)))
    head = model.class_layers
    features = head.flatten(head.pool(head.relu(h)))
    pooled.append(features)
    return pooled, head.out(features)


def depth_features_and_logits(model: nn.Module, x):
    """One forward pass -> (features of several depths (N, F_total), logits (N, L)); logits equal ``model(x)``.

    ``depth_parts`` concatenated: the final features are the trailing columns, so a reference
    fitted on them alone still reads them. The out-of-distribution score works on these.
    """
    import torch

    parts, logits = depth_parts(model, x)
    return torch.cat(parts, 1), logits


def depth_names() -> list[str]:
    """The layer of each block of ``depth_features_and_logits``' features, in order."""
    return [f"features.{name}" for name in OOD_TAPS] + [FEATURES_LAYER]
