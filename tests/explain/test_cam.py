"""Grad-CAM from the forward pass: equal to the backward pass's Grad-CAM where the head is pool + linear.

The expected maps come from the backward pass (MONAI's GradCAM through ``GradCam``, and
``GradCam.many``'s head-only backward), never from the forward-pass code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxrdx.explain.cam import ForwardCam, cam_cells, heatmap_maker, linear_head
from cxrdx.explain.gradcam import GradCam, to_source
from cxrdx.explain.maps import cam_squares, upsample_bilinear
from cxrdx.imaging.letterbox import letterbox
from cxrdx.labels import FINDINGS
from cxrdx.model.networks import build_model

TOLERANCE = 1e-6


def imported_like(model: nn.Module, seed: int = 1) -> nn.Module:
    """Weights as a trained / imported network has them, unlike a fresh initialisation: batch-norm
    statistics and affines away from (0, 1), a small head with negative biases (rare findings)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(0.3 + torch.rand(n, generator=g) * 2)
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
        head = model.class_layers.out
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.05)
        head.bias.copy_(-1 - 3 * torch.rand(head.bias.shape, generator=g))
    return model


def _network(architecture: str, weights: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(architecture, in_channels=1).eval()
    return imported_like(model) if weights == "imported" else model


CASES = [
    ("densenet-tiny", 64, "random"),
    ("densenet-tiny", 64, "imported"),
    ("densenet121", 96, "random"),
    ("densenet121", 96, "imported"),
]


def monai_gradcam(model: nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
    """The backward pass's Grad-CAM as MONAI computes it (in the model's dtype), min-max per map."""
    from monai.visualize import GradCAM

    from cxrdx.explain.gradcam import normalize_map

    cam = GradCAM(nn_module=model, target_layers="class_layers.relu", postprocessing=lambda m: m)
    maps = cam(x.clone().requires_grad_(True), class_idx=class_index).detach().numpy()[:, 0]
    model.zero_grad(set_to_none=True)
    return np.stack([normalize_map(m) for m in maps])


@pytest.mark.parametrize(("architecture", "size", "weights"), CASES)
def test_forward_cam_is_backward_gradcam_in_float64(architecture, size, weights):
    """The identity itself: in float64 (no fp32 rounding of 1024-channel sums) the forward-pass maps
    equal MONAI's backward-pass Grad-CAM, after the same ReLU, upsampling and normalisation."""
    model = _network(architecture, weights).double()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, size, size)))
    # every finding on the tiny network; every third on DenseNet121 (a full backward pass each)
    classes = list(range(0, len(FINDINGS), 1 if architecture == "densenet-tiny" else 3))
    forward = ForwardCam(model).many(x, classes)  # (K, N, S, S)
    assert forward.shape == (len(classes), 2, size, size)
    _, box = letterbox(np.zeros((size, size * 2 // 3), np.float32), size)
    for k, c in enumerate(classes):
        backward = monai_gradcam(model, x, c)
        np.testing.assert_allclose(forward[k], backward, atol=TOLERANCE, rtol=0)
        # and after the normalisation over the image inside a letterbox (what is shown and scored)
        np.testing.assert_allclose(
            to_source(forward[k, 0], box), to_source(backward[0], box), atol=TOLERANCE, rtol=0
        )
    # the comparison is between maps with something in them, not all-zero ones
    assert sum(int(forward[k, n].max() == 1.0) for k in range(len(classes)) for n in range(2)) >= len(classes)


@pytest.mark.parametrize(("architecture", "size", "weights"), CASES[:2] + CASES[3:])
def test_forward_cam_matches_gradcam_in_float32(architecture, size, weights):
    """In fp32 (how both run in cxrdx) they differ only by rounding: sums over 1024 channels in
    another order, ~1e-6 of a map's range."""
    model = _network(architecture, weights)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, size, size)).astype(np.float32))
    classes = list(range(len(FINDINGS)))
    forward = ForwardCam(model).many(x, classes)
    np.testing.assert_allclose(forward, GradCam(model).many(x, classes), atol=1e-5, rtol=0)
    full = GradCam(model)  # MONAI's GradCAM: a full backward pass per class
    for c in classes[::5]:
        np.testing.assert_allclose(forward[c], full(x, c), atol=1e-5, rtol=0)


def test_cells_rebuild_the_logits():
    """sum over cells of M_c plus the bias is the logit (the definition of global average + linear)."""
    model = _network("densenet-tiny", "imported")
    x = torch.randn(3, 1, 64, 64)
    logits, cells = ForwardCam(model).cells(x)
    with torch.inference_mode():
        direct = model(x)
    np.testing.assert_allclose(logits.numpy(), direct.numpy(), atol=0)  # the forward pass is the network's
    rebuilt = cells.sum((2, 3)) + model.class_layers.out.bias.detach()
    np.testing.assert_allclose(rebuilt.numpy(), direct.numpy(), atol=1e-5)
    assert cells.shape == (3, len(FINDINGS), 2, 2)


def test_cam_cells_by_hand():
    linear = nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[2.0, -1.0]]))
    acts = torch.tensor([[[[1.0, 0.0]], [[0.0, 4.0]]]])  # (1, 2 channels, 1 x 2 cells)
    # cell 0: (2 * 1 - 1 * 0) / 2 = 1; cell 1: (2 * 0 - 1 * 4) / 2 = -2
    np.testing.assert_allclose(cam_cells(acts, linear).detach().numpy(), [[[[1.0, -2.0]]]])


@pytest.mark.parametrize(("n_in", "n_out"), [(2, 64), (3, 96), (10, 320), (7, 7), (4, 50)])
def test_upsampling_is_torch_interpolate(n_in, n_out):
    cells = torch.from_numpy(np.random.default_rng(n_in).random((2, 3, n_in, n_in + 1)))
    expected = F.interpolate(cells, size=(n_out, n_out + 3), mode="bilinear", align_corners=False)
    got = upsample_bilinear(cells.numpy(), (n_out, n_out + 3))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-12)


def test_cam_squares_relu_then_normalise():
    cells = np.array([[[[-1.0, 2.0], [0.0, 4.0]]]])  # upsampled to 2 x 2 it is the same grid
    np.testing.assert_allclose(cam_squares(cells, (2, 2))[0, 0], [[0.0, 0.5], [0.0, 1.0]])
    assert cam_squares(-np.ones((1, 1, 2, 2)), (4, 4)).max() == 0  # all negative: zeros, never NaN


def test_the_densenets_have_the_head():
    for arch in ("densenet-tiny", "densenet121"):
        model = build_model(arch)
        assert linear_head(model) is model.class_layers.out


class _TwoLayerHead(nn.Module):
    pass


def _with(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    setattr(model.class_layers, name, module)
    return model


@pytest.mark.parametrize(
    ("make", "target"),
    [
        (lambda m: m, "features.denseblock4"),  # another target layer: a dense block and norm5 follow
        (lambda m: m, "features.norm5"),  # before the ReLU: not linear in the activations
        (lambda m: m, "class_layers.nothing"),
        (lambda m: _with(m, "out", nn.Sequential(nn.Linear(44, 8), nn.ReLU(), nn.Linear(8, 14))), None),
        (lambda m: _with(m, "pool", nn.AdaptiveMaxPool2d(1)), None),
        (lambda m: _with(m, "pool", nn.AdaptiveAvgPool2d(2)), None),
        (lambda m: _with(m, "flatten", nn.Sequential(nn.Flatten(), nn.Sigmoid())), None),
    ],
)
def test_other_heads_and_layers_keep_the_backward_pass(make, target):
    torch.manual_seed(0)
    model = make(build_model("densenet-tiny", in_channels=1)).eval()
    target = target or "class_layers.relu"
    assert linear_head(model, target) is None
    with pytest.raises(ValueError):
        ForwardCam(model, target)
    if target in dict(model.named_modules()):
        assert isinstance(heatmap_maker(model, target), GradCam)


def test_a_forward_that_is_not_its_structure_falls_back_to_gradcam():
    """The structure says pool + linear, but the forward doubles the logits: the maps' sums no longer
    rebuild the logits, so the backward pass is used (and its maps returned)."""
    torch.manual_seed(0)
    model = build_model("densenet-tiny", in_channels=1).eval()
    original = model.forward
    model.forward = lambda x: 2 * original(x) + 1
    maker = heatmap_maker(model)
    x = torch.randn(1, 1, 64, 64)
    got = maker.many(x, [0, 3])
    assert maker.backward is not None
    np.testing.assert_allclose(got, GradCam(model).many(x, [0, 3]), atol=1e-6)
