"""Class activation maps: Grad-CAM from the forward pass, for networks that end in average pool + linear.

When the logits are ``logit_c = sum_k w_ck mean_ij(A_kij) + b_c`` (``A`` = the target layer's
output, h x w cells; a global average pool, a flatten and one Linear after it, nothing else),
the gradient Grad-CAM averages is the constant ``d logit_c / d A_kij = w_ck / (h w)``, so

    Grad-CAM_c = ReLU(sum_k (w_ck / (h w)) A_k) = ReLU(M_c),   M_c = sum_k w_ck A_k / (h w),

the class activation map of Zhou et al. (2016) scaled by 1 / (h w): no backward pass is
needed, and every finding's map is one 1x1 convolution of ``A`` (``cam_cells``). The cells
also satisfy ``sum_ij M_cij + b_c = logit_c``, which ``ForwardCam`` checks on every batch.

Whether a network has that head is decided by its structure (``linear_head``), never by
its name: MONAI's DenseNet (ours and every import: ``class_layers`` = ReLU, AdaptiveAvgPool2d(1),
Flatten, Linear) has it at ``class_layers.relu``; another target layer or another head does
not, and ``heatmap_maker`` then keeps the backward pass (``GradCam``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from cxrdx.explain.gradcam import GradCam
from cxrdx.explain.maps import cam_squares
from cxrdx.model.networks import GRADCAM_LAYER

_PASS_THROUGH = (nn.Flatten, nn.Identity, nn.Dropout)  # identity on an (N, K, 1, 1) / (N, K) tensor in eval
LOGIT_TOLERANCE = (
    1e-3  # |sum of cells + bias - logit|, relative to max(1, |logit|): the head is what it seems
)


def linear_head(model: nn.Module, target_layer: str = GRADCAM_LAYER) -> nn.Linear | None:
    """The Linear that reads the global average of ``target_layer``'s output, or None.

    Structural: ``target_layer`` is a child of a Sequential that is the network's last child, and
    what follows it there is exactly an ``AdaptiveAvgPool2d`` to 1 x 1, then only flatten / dropout /
    identity layers, then one ``nn.Linear`` as the last layer. Anything else (a max pool, a second
    Linear, a non-linearity after the pool, a target layer inside a dense block): None.
    """
    parent_name, _, leaf = target_layer.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        return None
    children = list(model.children())
    if not isinstance(parent, nn.Sequential) or not children or children[-1] is not parent:
        return None
    names = [name for name, _ in parent.named_children()]
    if leaf not in names:
        return None
    after = [module for _, module in list(parent.named_children())[names.index(leaf) + 1 :]]
    if len(after) < 2 or not isinstance(after[0], nn.AdaptiveAvgPool2d):
        return None
    if tuple(np.broadcast_to(np.asarray(after[0].output_size, dtype=object), (2,))) != (1, 1):
        return None
    *middle, last = after[1:]
    if not isinstance(last, nn.Linear) or not all(isinstance(m, _PASS_THROUGH) for m in middle):
        return None
    return last


def cam_cells(acts: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """(N, K, h, w) activations -> (N, L, h, w) maps ``M_c = sum_k w_ck A_k / (h w)`` (no bias, no ReLU).

    A 1x1 convolution (what the ONNX export computes); ReLU of it is Grad-CAM's map on the cells.
    """
    h, w = acts.shape[-2:]
    weight = linear.weight.to(acts.dtype) / float(h * w)
    return F.conv2d(acts, weight[:, :, None, None])


class ForwardCam:
    """``GradCam.many``'s maps from one forward pass with no autograd, for a network ``linear_head`` accepts.

    Hooks the target layer for the duration of a call: not thread-safe (Predictor holds a lock
    and gives it a private copy of the network when other threads run the same one).
    """

    def __init__(self, model: nn.Module, target_layer: str = GRADCAM_LAYER) -> None:
        linear = linear_head(model, target_layer)
        if linear is None:
            raise ValueError(f"{target_layer!r} is not read by an average pool and one linear layer")
        self.model, self.target_layer, self.linear = model, target_layer, linear

    def cells(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, L), maps ``M`` (N, L, h, w)) from one forward pass."""
        captured: list[torch.Tensor] = []
        layer = self.model.get_submodule(self.target_layer)
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.inference_mode():
                logits = self.model(x.to(self.linear.weight.dtype))  # fp32, or float64 in the tests
                cells = cam_cells(captured[-1], self.linear)
        finally:
            handle.remove()
        return logits, cells

    def many(self, x: torch.Tensor, class_indices: Sequence[int]) -> np.ndarray:
        """(K, N, S, S) heatmaps in [0, 1], as ``GradCam.many``; ValueError when the logits disagree
        with the maps (the forward is not what the structure says: the caller uses the backward pass)."""
        logits, cells = self.cells(x)
        bias = self.linear.bias if self.linear.bias is not None else logits.new_zeros(logits.shape[1])
        rebuilt = cells.sum((2, 3)) + bias.to(cells.dtype)
        if not torch.all((rebuilt - logits).abs() <= LOGIT_TOLERANCE * logits.abs().clamp(min=1.0)):
            raise ValueError("the logits are not the average of the class activation maps")
        picked = cells[:, [int(c) for c in class_indices]].cpu().numpy()
        return cam_squares(picked, x.shape[2:]).transpose(1, 0, 2, 3)


class _Fallback:
    """``ForwardCam`` that switches to ``GradCam`` for good when a batch's logits disagree with its maps."""

    def __init__(self, model: nn.Module, target_layer: str) -> None:
        self.forward, self.model, self.target_layer = ForwardCam(model, target_layer), model, target_layer
        self.backward: GradCam | None = None

    def many(self, x: torch.Tensor, class_indices: Sequence[int]) -> np.ndarray:
        if self.backward is None:
            try:
                return self.forward.many(x, class_indices)
            except ValueError:
                self.backward = GradCam(self.model, self.target_layer)
        return self.backward.many(x, class_indices)


def heatmap_maker(model: nn.Module, target_layer: str = GRADCAM_LAYER) -> _Fallback | GradCam:
    """What makes every finding's heatmap: the forward pass where ``linear_head`` finds the
    average-pool + linear head (the same maps), else Grad-CAM's backward pass."""
    if linear_head(model, target_layer) is not None:
        return _Fallback(model, target_layer)
    return GradCam(model, target_layer)
