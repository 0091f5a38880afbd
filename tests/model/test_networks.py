"""The network registry: DenseNet121's structure and the BatchNorm eps a checkpoint asks for."""

import torch

from cxrdx.model.networks import GRADCAM_LAYER, build_model


def test_densenet121_structure_is_densenet121_gap_linear():
    model = build_model("densenet121")
    assert sum(p.numel() for p in model.parameters()) == 6_968_206  # DenseNet121 + Linear(1024, 14)
    assert isinstance(model.get_submodule("class_layers.out"), torch.nn.Linear)
    assert model.get_submodule("class_layers.out").in_features == 1024
    assert isinstance(model.get_submodule(GRADCAM_LAYER), torch.nn.ReLU)
    logits = model.eval()(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 14)


def test_bn_eps_is_applied():
    model = build_model("densenet-tiny", bn_eps=1.001e-5)
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == {1.001e-5}
