"""Grad-CAM heatmaps: ``GradCam(model)(x, class_index)`` and ``GradCam.many``.

Grad-CAM (Selvaraju et al. 2017) on ``cxrdx.model.GRADCAM_LAYER`` =
``class_layers.relu``: the activated output of DenseNet's last dense block
(after ``norm5``), the last layer that still has a spatial grid. We use MONAI's
tested ``monai.visualize.GradCAM`` and always pass the class index explicitly:
this is a multi-label model, so "the argmax class" is not the question a user asks.

MONAI's default post-processing maps (min, max) to (1, 0), i.e. it *inverts* the
map; we replace it with an identity and normalise each map to [0, 1] ourselves
(min-max; a flat map becomes all zeros, never NaN). The map shown and scored is
``to_source``'s: cropped to the image inside the letterbox and normalised over the
image only, so the padding neither sets the scale nor holds the maximum.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cxrdx.errors import ConfigError
from cxrdx.explain.maps import CAM_STRIDE, normalize_map, to_source  # noqa: F401 - re-exported
from cxrdx.model.networks import GRADCAM_LAYER


def upsample_cams(cams: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, K, h, w) cell maps -> (N, K, *size): THE upsampling of a Grad-CAM grid to the input."""
    import torch.nn.functional as F

    return F.interpolate(cams, size=tuple(size), mode="bilinear", align_corners=False)


class GradCam:
    """``GradCam(model)(x, class_index) -> (N, S, S)`` float32 heatmaps in [0, 1].

    Wraps ``monai.visualize.GradCAM`` on ``target_layer`` (default
    ``class_layers.relu``). MONAI registers hooks on that layer and switches its
    ``inplace`` flag off (an in-place ReLU breaks full backward hooks); the output
    values are unchanged. Works even when the caller is inside
    ``torch.inference_mode`` or ``no_grad``. Not thread-safe: ``Predictor`` holds a lock.
    """

    def __init__(self, model: nn.Module, target_layer: str = GRADCAM_LAYER) -> None:
        from monai.visualize import GradCAM

        names = {name for name, _ in model.named_modules()}
        if target_layer not in names:
            raise ConfigError(
                f"Grad-CAM target layer {target_layer!r} is not in this network; "
                f"its last layers are {sorted(names)[-5:]}"
            )
        self.model = model
        self.target_layer = target_layer
        self._cam = GradCAM(nn_module=model, target_layers=target_layer, postprocessing=lambda m: m)

    def __call__(self, x: torch.Tensor, class_index: int) -> np.ndarray:
        if x.ndim != 4:
            raise ValueError(f"Grad-CAM expects an (N, C, S, S) batch, got shape {tuple(x.shape)}")
        class_index = int(class_index)
        with torch.inference_mode(False), torch.enable_grad():
            # An inference-mode tensor cannot enter autograd; clone() outside it makes a normal one.
            x = x.detach().clone().float().requires_grad_(True)
            try:
                maps = self._cam(x, class_idx=class_index)
            finally:
                self.model.zero_grad(set_to_none=True)
        maps = maps.detach().float().cpu().numpy()[:, 0]
        return np.stack([normalize_map(m) for m in maps]).astype(np.float32)

    def many(self, x: torch.Tensor, class_indices: Sequence[int]) -> np.ndarray:
        """(K, N, S, S) heatmaps for K classes from ONE forward pass; the same maps as ``__call__``.

        Why: ``__call__`` runs a forward and a full backward (to the input and every
        weight) per class, ~3 forwards each. Grad-CAM needs only d logit / d A at the
        target layer, so here the forward runs without autograd up to that layer, A is
        made a leaf there, and each class costs one backward through the head alone
        (pool + linear: microseconds). Top-3 heatmaps then cost about one forward.
        """
        if x.ndim != 4:
            raise ValueError(f"Grad-CAM expects an (N, C, S, S) batch, got shape {tuple(x.shape)}")
        import torch.nn.functional as F

        layer = dict(self.model.named_modules())[self.target_layer]
        captured: list[torch.Tensor] = []

        def leaf(_module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
            acts = out.detach().requires_grad_(True)
            captured.append(acts)
            torch.set_grad_enabled(True)  # record the head only; no_grad's exit restores the mode
            return acts

        handle = layer.register_forward_hook(leaf)
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # MONAI's backward hook on the layer fires on d/dA with nothing upstream needing grad.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                logits = self.model(x.detach().clone().float())
                acts = captured[-1]
                cams = []
                for c in class_indices:
                    with torch.enable_grad():
                        (grad,) = torch.autograd.grad(logits[:, int(c)].sum(), acts, retain_graph=True)
                    weights = grad.mean(dim=(2, 3), keepdim=True)
                    cams.append(F.relu((weights * acts.detach()).sum(1, keepdim=True)))
                cam = upsample_cams(torch.cat(cams, 1), x.shape[2:])
        finally:
            handle.remove()
        out = cam.float().cpu().numpy()  # (N, K, S, S)
        return np.stack(
            [np.stack([normalize_map(m) for m in out[:, k]]) for k in range(out.shape[1])]
        ).astype(np.float32)
