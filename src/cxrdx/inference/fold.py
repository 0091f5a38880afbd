"""Fold what is free into the network for inference: the normalisation and the gray channels.

The network's input is ``x_c = a_c * g + d_c`` for every channel ``c``, where ``g`` is the
letterboxed [0, 1] gray image, ``a_c = (hi - lo) / std_c`` and ``d_c = (lo - mean_c) / std_c``
(``Preprocessing``). The channels are copies of one gray image, so the first convolution

    conv(W, x) + b = conv(sum_c a_c W_c, g) + sum_c d_c conv(W_c, 1) + b

needs one input channel (a third of its multiply-adds) and no normalisation on the host. At
the borders ``conv(W_c, 1)`` sees the zero padding, so it is *not* a constant there. Two
exact forms follow:

- all channels share ``mean`` and ``std`` (our own models, torchxrayvision's one channel):
  pad ``g`` with ``p = (mean - lo) / (hi - lo)``, the gray value that normalises to 0, then
  convolve without padding and add the constant bias ``b + sum_c d_c sum(W_c)``;
- per-channel statistics (ImageNet-style CheXNet ports): pad ``g`` with zeros and add the
  exact per-position bias map ``b + sum_c d_c conv(W_c, pad0(1))`` (fixed, since the export
  has a fixed input size).

``fold_input`` returns a copy of the network that takes ``(N, 1, S, S)`` gray in [0, 1];
tests check it against the unfolded network to 1e-5.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from cxrdx.errors import CheckpointError
from cxrdx.inference.backends import channel_affine

if TYPE_CHECKING:
    from cxrdx.imaging.preprocessing import Preprocessing

FIRST_CONV = "features.conv0"  # MONAI DenseNet's stem (model/networks.py): the first layer the input meets


def fold_input(model: torch.nn.Module, prep: Preprocessing) -> torch.nn.Module:
    """A copy of ``model`` that takes (N, 1, S, S) gray in [0, 1] (S = ``prep.size``)."""
    if not prep.foldable:
        raise CheckpointError(
            f"cannot fold a {prep.normalization!r} normalisation into {FIRST_CONV}: it depends on each image"
        )
    net = copy.deepcopy(model).eval()
    parent_name, _, leaf = FIRST_CONV.rpartition(".")
    try:
        parent = net.get_submodule(parent_name)
        conv = getattr(parent, leaf)
    except AttributeError:
        raise CheckpointError(f"cannot fold the input: the network has no {FIRST_CONV}") from None
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.in_channels != prep.channels:
        raise CheckpointError(f"cannot fold the input into {FIRST_CONV} ({conv})")
    setattr(parent, leaf, _FoldedStem(conv, prep))
    return net


class _FoldedStem(nn.Module):
    """The first convolution with the normalisation and the channel copies folded in (exact)."""

    def __init__(self, conv: nn.Conv2d, prep: Preprocessing) -> None:
        super().__init__()
        a, d = channel_affine(prep)
        w = conv.weight.detach().double()  # (O, C, kh, kw)
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0]).double()
        av = torch.from_numpy(np.ascontiguousarray(a)).to(w)
        dv = torch.from_numpy(np.ascontiguousarray(d)).to(w)
        folded = (w * av.view(1, -1, 1, 1)).sum(1, keepdim=True)  # (O, 1, kh, kw)
        ph, pw = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, conv.padding)
        self.pad = (pw, pw, ph, ph)
        self.stride, self.dilation = conv.stride, conv.dilation
        ratios = -d / a  # the gray value each channel normalises to 0
        self.uniform = bool(np.allclose(ratios, ratios[0], rtol=0, atol=1e-12))
        self.pad_value = float(ratios[0]) if self.uniform else 0.0
        if self.uniform:
            b_total = bias + (w.sum((2, 3)) * dv.view(1, -1)).sum(1)  # (O,)
            self.register_buffer("bias_term", b_total.float().view(1, -1, 1, 1))
        else:
            size = prep.size
            ones = torch.ones(1, w.shape[1], size, size, dtype=torch.float64)
            contrib = F.conv2d(ones, w * dv.view(1, -1, 1, 1), None, conv.stride, conv.padding, conv.dilation)
            self.register_buffer("bias_term", (contrib + bias.view(1, -1, 1, 1)).float())
        self.weight = torch.nn.Parameter(folded.float(), requires_grad=False)

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        padded = F.pad(gray, self.pad, mode="constant", value=self.pad_value)
        return F.conv2d(padded, self.weight, None, self.stride, 0, self.dilation) + self.bias_term
