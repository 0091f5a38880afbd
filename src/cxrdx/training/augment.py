"""Augmentation on the batch tensor, on the training device (no CPU cost on the GPU path).

Both take (B, 1, S, S) float images in [0, 1] and a ``torch.Generator`` on the same
device, so a resumed run replays the same random stream.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def random_flip(x: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=rng) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_affine(
    x: torch.Tensor, rng: torch.Generator | None, degrees: float, translate: float, scale: float
) -> torch.Tensor:
    """Small random rotation, scale and shift per image; uncovered corners are black, like the letterbox.

    ``degrees``: rotation bound; ``translate``: shift bound as a fraction of the side;
    ``scale``: +- fraction.
    """
    n = x.shape[0]

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, device=x.device, generator=rng) * 2 - 1) * bound

    angle = uniform(math.radians(degrees))
    factor = 1 + uniform(scale)
    tx, ty = uniform(2 * translate), uniform(2 * translate)  # grid units span 2
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
