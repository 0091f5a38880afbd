"""`cxrdx import`: every foreign layout, built here from random weights, must give the source's outputs.

The reference for torch layouts is an independent functional DenseNet written in
torchvision's key names (``tv_forward``) that consumes the source tensors directly;
the foreign files are written from the same tensors in each project's own key style.
For Keras, a real ``keras.applications.DenseNet121`` (Keras 3, torch backend) is the
reference when keras is installed; the legacy Keras 2 layout is also checked against
``tv_forward`` so the test runs without keras.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from testkit import keras_seed_model
from torch import nn

from cxrdx.cli import main
from cxrdx.errors import CheckpointError
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import (
    CheckpointMeta,
    is_init_only,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from cxrdx.model.import_weights import KINDS, import_weights
from cxrdx.model.importers import registry
from cxrdx.model.importers.chexnet import CHEXNET_LABELS
from cxrdx.model.importers.torchvision import IMAGENET_MEAN, IMAGENET_STD, map_torchvision_key
from cxrdx.model.importers.xrv import XRV_PATHOLOGIES, XRV_VARIANTS
from cxrdx.model.init_weights import load_init_features
from cxrdx.model.networks import build_model

TINY = {"init": 16, "growth": 8, "blocks": (2, 2, 2, 2), "bn_size": 2}  # = registry "densenet-tiny"
REAL = {"init": 64, "growth": 32, "blocks": (6, 12, 24, 16), "bn_size": 4}  # DenseNet121
TOL = 1e-4


# ----------------------------------------------------------------------------- independent reference


def make_tv_state(cfg: dict, in_ch: int, n_cls: int, seed: int) -> OrderedDict:
    """Random DenseNet weights under torchvision's (new-style) key names, BN statistics included."""
    g = torch.Generator().manual_seed(seed)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()

    def conv(name: str, out_c: int, in_c: int, k: int) -> None:
        sd[name + ".weight"] = torch.randn(out_c, in_c, k, k, generator=g) * math.sqrt(2.0 / (in_c * k * k))

    def bn(name: str, c: int) -> None:
        sd[name + ".weight"] = torch.rand(c, generator=g) + 0.5
        sd[name + ".bias"] = torch.randn(c, generator=g) * 0.1
        sd[name + ".running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[name + ".running_var"] = torch.rand(c, generator=g) + 0.5
        sd[name + ".num_batches_tracked"] = torch.tensor(7)

    conv("features.conv0", cfg["init"], in_ch, 7)
    bn("features.norm0", cfg["init"])
    c = cfg["init"]
    for b, n in enumerate(cfg["blocks"], 1):
        for layer in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{layer}."
            bn(p + "norm1", c)
            conv(p + "conv1", cfg["bn_size"] * cfg["growth"], c, 1)
            bn(p + "norm2", cfg["bn_size"] * cfg["growth"])
            conv(p + "conv2", cfg["growth"], cfg["bn_size"] * cfg["growth"], 3)
            c += cfg["growth"]
        if b < len(cfg["blocks"]):
            bn(f"features.transition{b}.norm", c)
            conv(f"features.transition{b}.conv", c // 2, c, 1)
            c //= 2
    bn("features.norm5", c)
    sd["classifier.weight"] = torch.randn(n_cls, c, generator=g) / math.sqrt(c) * 2
    sd["classifier.bias"] = torch.randn(n_cls, generator=g) * 0.3
    return sd


def tv_forward(
    sd: dict, x: torch.Tensor, blocks: tuple, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision DenseNet semantics, written functionally: (logits, pooled features)."""

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t,
            sd[p + ".running_mean"],
            sd[p + ".running_var"],
            sd[p + ".weight"],
            sd[p + ".bias"],
            False,
            0.0,
            eps,
        )

    x = F.conv2d(x, sd["features.conv0.weight"], stride=2, padding=3)
    x = F.max_pool2d(F.relu(bn(x, "features.norm0")), 3, 2, 1)
    for b, n in enumerate(blocks, 1):
        for layer in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{layer}."
            y = F.conv2d(F.relu(bn(x, p + "norm1")), sd[p + "conv1.weight"])
            y = F.conv2d(F.relu(bn(y, p + "norm2")), sd[p + "conv2.weight"], padding=1)
            x = torch.cat([x, y], 1)
        if b < len(blocks):
            p = f"features.transition{b}."
            x = F.avg_pool2d(F.conv2d(F.relu(bn(x, p + "norm")), sd[p + "conv.weight"]), 2, 2)
    pooled = F.relu(bn(x, "features.norm5")).mean((2, 3))
    return F.linear(pooled, sd["classifier.weight"], sd["classifier.bias"]), pooled


def old_style(sd: dict) -> OrderedDict:
    """Pre-0.4 torchvision names (norm.1, conv.2, ...) and no num_batches_tracked, as in CheXNet's file."""
    out = OrderedDict()
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        if ".denselayer" in key:
            for part in ("norm1", "norm2", "conv1", "conv2"):
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        out[key] = value
    return out


def to_module(sd: dict, root: nn.Module) -> nn.Module:
    """A module tree holding ``sd`` under the same names (what a whole pickled model contains)."""
    for key, value in sd.items():
        *path, leaf = key.split(".")
        m = root
        for part in path:
            if part not in m._modules:
                m.add_module(part, nn.Module())
            m = m._modules[part]
        if leaf in ("running_mean", "running_var", "num_batches_tracked", "op_threshs"):
            m.register_buffer(leaf, value.clone())
        else:
            m.register_parameter(leaf, nn.Parameter(value.clone()))
    return root


def images(n: int = 3, size: int = 64, seed: int = 1) -> np.ndarray:
    """[0, 1] gray squares with structure (a gradient and a blob) plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        out.append(np.clip(0.3 * yy + 0.5 * blob + 0.1 * rng.random((size, size)), 0, 1))
    return np.stack(out).astype(np.float32)


def imagenet_input(squares: np.ndarray) -> torch.Tensor:
    """The source's own preprocessing: gray -> RGB in [0, 1], ImageNet mean/std."""
    x = torch.from_numpy(squares)[:, None].repeat(1, 3, 1, 1)
    return (x - torch.tensor(IMAGENET_MEAN)[None, :, None, None]) / torch.tensor(IMAGENET_STD)[
        None, :, None, None
    ]


def ours(ckpt: Path, squares: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """cxrdx's probabilities, with the preprocessing the checkpoint metadata declares."""
    model, meta = load_checkpoint(ckpt)
    x = torch.from_numpy(meta.preprocessing.to_input(squares))
    with torch.no_grad():
        return torch.sigmoid(model(x)).numpy(), meta.labels


def assert_same(
    ours_p: np.ndarray, labels: list[str], source_p: np.ndarray, source_labels: list[str]
) -> None:
    cols = [source_labels.index(name) for name in labels]
    expected = source_p[:, cols]
    assert expected.std() > 0.02, "reference outputs are saturated: the comparison would prove nothing"
    np.testing.assert_allclose(ours_p, expected, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- key names


def test_torchvision_key_mapping_old_new_and_prefixed():
    assert (
        map_torchvision_key("module.densenet121.features.denseblock1.denselayer1.norm.1.weight")
        == "features.denseblock1.denselayer1.layers.norm1.weight"
    )
    assert (
        map_torchvision_key("features.denseblock4.denselayer16.conv2.weight")
        == "features.denseblock4.denselayer16.layers.conv2.weight"
    )
    for same in ("features.norm0.running_var", "features.norm5.bias", "features.transition3.norm.weight",
                 "features.transition1.conv.weight", "features.conv0.weight"):  # fmt: skip
        assert map_torchvision_key("module." + same) == same
    assert map_torchvision_key("module.densenet121.classifier.0.bias") == "class_layers.out.bias"
    assert map_torchvision_key("classifier.weight") == "class_layers.out.weight"
    assert map_torchvision_key("features.denseblock1.denselayer1.relu.1.weight") is None
    assert map_torchvision_key("fc.weight") is None


def test_our_key_names_are_monai_layers():
    keys = set(build_model("densenet-tiny").state_dict())
    assert "features.denseblock1.denselayer1.layers.norm1.weight" in keys
    assert "class_layers.out.weight" in keys


# ----------------------------------------------------------------------------- chexnet


def write_chexnet(path: Path, sd: dict) -> None:
    """arnoweng/CheXNet's model.pth.tar: DataParallel + wrapper prefixes, old names, Sequential head."""
    state = OrderedDict()
    for key, value in old_style(sd).items():
        key = key.replace("classifier.", "classifier.0.")
        state["module.densenet121." + key] = value
    blob = {"epoch": 7, "arch": "DenseNet121", "best_loss": 0.15, "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}}  # fmt: skip
    torch.save(blob, path, _use_new_zipfile_serialization=False)  # torch 0.3-era serialisation


def test_chexnet_outputs_match_source_by_name(tmp_path):
    sd = make_tv_state(TINY, 3, 14, seed=0)
    src = tmp_path / "model.pth.tar"
    write_chexnet(src, sd)
    result = import_weights("chexnet", src, tmp_path / "chexnet.safetensors")
    squares = images()
    with torch.no_grad():
        source_p = torch.sigmoid(tv_forward(sd, imagenet_input(squares), TINY["blocks"])[0]).numpy()
    p, labels = ours(result.out, squares)
    assert labels == list(FINDINGS)
    assert_same(p, labels, source_p, list(CHEXNET_LABELS))
    meta = result.meta
    assert meta.architecture == "densenet-tiny" and meta.in_channels == 3
    assert meta.source["kind"] == "chexnet" and len(meta.source["sha256"]) == 64
    assert meta.source["label_mapping"]["Effusion"] == CHEXNET_LABELS.index("Effusion")
    pre = meta.preprocessing
    assert (pre.size, pre.channels, pre.pixel_range, pre.mean, pre.std) == (
        224,
        3,
        (0.0, 1.0),
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    assert not is_init_only(meta)


@pytest.mark.slow
def test_chexnet_real_densenet121(tmp_path):
    sd = make_tv_state(REAL, 3, 14, seed=3)
    src = tmp_path / "model.pth.tar"
    write_chexnet(src, sd)
    result = import_weights("chexnet", src, tmp_path / "chexnet121.safetensors")
    assert result.meta.architecture == "densenet121"
    squares = images(2)
    with torch.no_grad():
        source_p = torch.sigmoid(tv_forward(sd, imagenet_input(squares), REAL["blocks"])[0]).numpy()
    p, labels = ours(result.out, squares)
    assert_same(p, labels, source_p, list(CHEXNET_LABELS))


def test_predictor_applies_the_imported_preprocessing(tmp_path):
    from cxrdx.inference.predictor import Predictor

    sd = make_tv_state(TINY, 3, 14, seed=4)
    src = tmp_path / "model.pth.tar"
    write_chexnet(src, sd)
    ckpt = import_weights("chexnet", src, tmp_path / "c.safetensors").out
    predictor = Predictor.load(ckpt)
    u8 = np.round(images(2, size=300) * 255).astype(np.uint8)
    batch = np.stack([predictor.prepare(s)[0] for s in u8])  # the centre crop of CheXNet's transform
    p, _ = predictor.probabilities(batch)
    # torchvision's Resize(256) on the 8-bit RGB PIL image, CenterCrop(224), ToTensor
    rgb = [np.asarray(Image.fromarray(u).convert("RGB").resize((256, 256), Image.BILINEAR)) for u in u8]
    squares = np.stack([r[16:240, 16:240, 0] for r in rgb]).astype(np.float32) / 255
    with torch.no_grad():
        source_p = torch.sigmoid(tv_forward(sd, imagenet_input(squares), TINY["blocks"])[0]).numpy()
    assert_same(p, predictor.labels, source_p, list(CHEXNET_LABELS))


def test_chexnet_custom_source_label_order(tmp_path):
    sd = make_tv_state(TINY, 3, 14, seed=5)
    src = tmp_path / "model.pth.tar"
    write_chexnet(src, sd)
    order = list(reversed(FINDINGS))
    result = import_weights("chexnet", src, tmp_path / "c.safetensors", source_labels=",".join(order))
    squares = images(2)
    with torch.no_grad():
        source_p = torch.sigmoid(tv_forward(sd, imagenet_input(squares), TINY["blocks"])[0]).numpy()
    p, labels = ours(result.out, squares)
    assert_same(p, labels, source_p, order)


# ----------------------------------------------------------------------------- strictness


def test_missing_unexpected_and_wrong_shape_are_listed(tmp_path):
    sd = make_tv_state(TINY, 3, 14, seed=6)
    del sd["features.denseblock2.denselayer1.conv1.weight"]
    sd["features.extra_layer.weight"] = torch.zeros(3)
    sd["features.norm5.bias"] = torch.zeros(5)
    src = tmp_path / "bad.pth.tar"
    write_chexnet(src, sd)
    out = tmp_path / "bad.safetensors"
    with pytest.raises(CheckpointError) as info:
        import_weights("chexnet", src, out)
    message = str(info.value)
    assert "features.denseblock2.denselayer1.layers.conv1.weight" in message  # missing
    assert "features.extra_layer.weight" in message  # maps to nothing
    assert "features.norm5.bias" in message  # wrong shape
    assert not out.exists()


def test_wrong_kind_is_explained(tmp_path):
    sd = make_tv_state(TINY, 1, 18, seed=7)
    src = tmp_path / "xrv_like.pt"
    torch.save(sd, src)
    with pytest.raises(CheckpointError, match="--from xrv"):
        import_weights("chexnet", src, tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------- pickles


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_code_in_a_pickle_never_runs_without_trust(tmp_path, writer):
    marker = tmp_path / "MARKER"
    src = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.zeros(1)}, "hook": _Evil(marker)}
    if writer == "pickle":
        src.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, src)
    pickled = [name for name, i in registry.importers().items() if ".pth" in i.suffixes]  # every torch source
    assert {"chexnet", "torchvision", "xrv"} <= set(pickled)
    for kind in pickled:
        with pytest.raises(CheckpointError, match="--trust-pickle"):
            import_weights(kind, src, tmp_path / "out.safetensors")
    assert main(["import", "--from", "chexnet", str(src), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert not marker.exists()


# ----------------------------------------------------------------------------- torchxrayvision

XRV_NIH_FILE = "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"


def xrv_input(squares: np.ndarray) -> torch.Tensor:
    """torchxrayvision's preprocessing: one channel, [0, 1] -> [-1024, 1024]."""
    return torch.from_numpy(squares)[:, None] * 2048.0 - 1024.0


def op_norm(p: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
    """xrv's op_norm, re-implemented: the operating point maps to 0.5."""
    return torch.where(p < th, p / (th * 2), 1.0 - (1.0 - p) / ((1.0 - th) * 2))


@pytest.fixture
def fake_xrv_package(tmp_path):
    """A module standing in for torchxrayvision.models, importable only while the fixture says so."""
    pkg = tmp_path / "pkgs"
    pkg.mkdir()
    (pkg / "fake_xrv_models.py").write_text(
        "from torch import nn\n\n\nclass DenseNet(nn.Module):\n    pass\n"
    )
    sys.path.insert(0, str(pkg))
    import fake_xrv_models

    yield fake_xrv_models
    if str(pkg) in sys.path:
        sys.path.remove(str(pkg))
    sys.modules.pop("fake_xrv_models", None)


@pytest.mark.parametrize("installed", [True, False])
def test_xrv_whole_pickled_model(tmp_path, fake_xrv_package, installed):
    sd = make_tv_state(TINY, 1, 18, seed=8)
    src = tmp_path / XRV_NIH_FILE
    torch.save(to_module(sd, fake_xrv_package.DenseNet()), src)
    if not installed:  # torchxrayvision not installed where the import runs
        sys.path.pop(0)
        sys.modules.pop("fake_xrv_models")
    with pytest.raises(CheckpointError, match="--trust-pickle") as info:
        import_weights("xrv", src, tmp_path / "x.safetensors")
    assert "fake_xrv_models.DenseNet" in str(info.value)

    result = import_weights("xrv", src, tmp_path / "x.safetensors", trust_pickle=True)
    meta = result.meta
    assert meta.labels == list(FINDINGS)  # the nih weights cover all 14 of ours
    dropped = meta.source["dropped_outputs"]
    assert len(dropped) == 4 and all(any(d.startswith(n) for d in dropped) for n in XRV_PATHOLOGIES[14:])
    assert meta.source["label_mapping"]["Effusion"] == XRV_PATHOLOGIES.index("Effusion")
    assert meta.source["label_mapping"]["Pleural_Thickening"] == XRV_PATHOLOGIES.index("Pleural_Thickening")
    pre = meta.preprocessing
    assert (pre.size, pre.channels, pre.pixel_range, pre.mean, pre.std) == (
        224,
        1,
        (-1024.0, 1024.0),
        (0.0,),
        (1.0,),
    )
    published = XRV_VARIANTS["nih"]["op_threshs"]
    assert meta.thresholds == pytest.approx({n: published[XRV_PATHOLOGIES.index(n)] for n in FINDINGS})

    squares = images()
    with torch.no_grad():
        logits = tv_forward(sd, xrv_input(squares), TINY["blocks"])[0]
    p, labels = ours(result.out, squares)
    assert_same(p, labels, torch.sigmoid(logits).numpy(), list(XRV_PATHOLOGIES))
    # our "positive" (p >= threshold) is xrv's op-normalised output >= 0.5
    th = torch.tensor([published[XRV_PATHOLOGIES.index(n)] for n in labels])
    xrv_calls = op_norm(torch.from_numpy(p), th) >= 0.5
    assert torch.equal(xrv_calls, torch.from_numpy(p) >= th)


def test_xrv_state_dict_with_op_threshs_and_dataparallel_prefix(tmp_path):
    sd = make_tv_state(TINY, 1, 18, seed=9)
    op = torch.linspace(0.02, 0.3, 18)
    op[XRV_PATHOLOGIES.index("Hernia")] = float("nan")
    state = OrderedDict(("module." + k, v) for k, v in sd.items())
    state["module.op_threshs"] = op
    src = tmp_path / "my_xrv_model.pt"
    torch.save(state, src)
    with pytest.raises(CheckpointError, match="--xrv-weights"):
        import_weights("xrv", src, tmp_path / "x.safetensors")
    result = import_weights("xrv", src, tmp_path / "x.safetensors", xrv_weights="densenet121-res224-all")
    meta = result.meta
    assert "Hernia" not in meta.thresholds  # NaN operating point: no threshold
    assert meta.thresholds["Effusion"] == pytest.approx(float(op[XRV_PATHOLOGIES.index("Effusion")]))
    squares = images()
    with torch.no_grad():
        logits = tv_forward(sd, xrv_input(squares), TINY["blocks"])[0]
    p, labels = ours(result.out, squares)
    assert_same(p, labels, torch.sigmoid(logits).numpy(), list(XRV_PATHOLOGIES))


def test_xrv_variant_with_fewer_of_our_findings(tmp_path):
    sd = make_tv_state(TINY, 1, 18, seed=10)
    src = tmp_path / "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    torch.save(sd, src)
    result = import_weights("xrv", src, tmp_path / "x.safetensors")
    expected = [n for n in FINDINGS if XRV_PATHOLOGIES.index(n) in XRV_VARIANTS["chex"]["present"]]
    assert result.meta.labels == expected and len(expected) == 7
    squares = images(2)
    with torch.no_grad():
        logits = tv_forward(sd, xrv_input(squares), TINY["blocks"])[0]
    p, labels = ours(result.out, squares)
    assert p.shape == (2, 7)
    assert_same(p, labels, torch.sigmoid(logits).numpy(), list(XRV_PATHOLOGIES))


# ----------------------------------------------------------------------------- torchvision init


@pytest.mark.parametrize("style", ["new", "old"])
def test_torchvision_becomes_a_feature_init(tmp_path, style):
    from cxrdx.inference.predictor import Predictor

    sd = make_tv_state(TINY, 3, 1000, seed=11)
    src = tmp_path / "densenet121-a639ec97.pth"
    torch.save(old_style(sd) if style == "old" else sd, src)
    result = import_weights("torchvision", src, tmp_path / "init.safetensors")
    assert is_init_only(result.meta) and result.meta.source["kind"] == "torchvision"
    with pytest.raises(CheckpointError, match="ImageNet initialisation"):
        Predictor.load(result.out)

    squares = images(2)
    with torch.no_grad():
        _, ref_pooled = tv_forward(sd, imagenet_input(squares), TINY["blocks"])
    for init in (result.out, src):  # the imported file, or the .pth directly
        model = build_model("densenet-tiny").eval()
        head_before = model.class_layers.out.weight.clone()
        loaded = load_init_features(init, model)
        assert len(loaded) == sum(k.startswith("features.") for k in model.state_dict())
        assert torch.equal(model.class_layers.out.weight, head_before)  # head stays as it was
        with torch.no_grad():
            pooled = F.relu(model.features(imagenet_input(squares))).mean((2, 3))
        np.testing.assert_allclose(pooled.numpy(), ref_pooled.numpy(), atol=TOL, rtol=0)


def test_load_init_features_refuses_a_partial_fit(tmp_path):
    sd = make_tv_state(TINY, 3, 1000, seed=12)
    del sd["features.transition2.conv.weight"]
    with pytest.raises(CheckpointError, match="transition2.conv.weight"):
        load_init_features(sd, build_model("densenet-tiny"))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_init_features(make_tv_state(TINY, 3, 1000, seed=12), build_model("densenet-tiny", in_channels=1))


# ----------------------------------------------------------------------------- keras


def tv_to_keras(
    sd: dict, blocks: tuple, head: str = "predictions"
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """keras.applications DenseNet121 layer names (Keras 2 spelling), HWIO kernels, (in, out) Dense."""

    def kernel(key: str) -> dict:
        return {"kernel": sd[key + ".weight"].permute(2, 3, 1, 0).numpy()}

    def bn(key: str) -> dict:
        return {"gamma": sd[key + ".weight"].numpy(), "beta": sd[key + ".bias"].numpy(),
                "moving_mean": sd[key + ".running_mean"].numpy(), "moving_variance": sd[key + ".running_var"].numpy()}  # fmt: skip

    layers = [("input_1", {}), ("zero_padding2d_1", {}), ("conv1/conv", kernel("features.conv0")),
              ("conv1/bn", bn("features.norm0")), ("conv1/relu", {}), ("pool1", {})]  # fmt: skip
    for b, n in enumerate(blocks, 1):
        for layer in range(1, n + 1):
            p, name = f"features.denseblock{b}.denselayer{layer}.", f"conv{b + 1}_block{layer}"
            layers += [(f"{name}_0_bn", bn(p + "norm1")), (f"{name}_1_conv", kernel(p + "conv1")),
                       (f"{name}_1_bn", bn(p + "norm2")), (f"{name}_2_conv", kernel(p + "conv2")),
                       (f"{name}_concat", {})]  # fmt: skip
        if b < len(blocks):
            layers += [(f"pool{b + 1}_bn", bn(f"features.transition{b}.norm")),
                       (f"pool{b + 1}_conv", kernel(f"features.transition{b}.conv")), (f"pool{b + 1}_pool", {})]  # fmt: skip
    layers += [("bn", bn("features.norm5")), ("avg_pool", {}),
               (head, {"kernel": sd["classifier.weight"].T.numpy(), "bias": sd["classifier.bias"].numpy()})]  # fmt: skip
    return layers


def write_keras2_h5(path: Path, layers: list, eps: float = 1.001e-5) -> None:
    """The legacy Keras 2 HDF5 layout of ``model.save``: model_weights/<layer>/<layer>/<weight>:0."""
    config = {"class_name": "Model", "config": {"layers": [
        {"class_name": "BatchNormalization" if "bn" in name.split("_")[-1] or name.endswith("/bn") or name == "bn"
         else ("Dense" if name == layers[-1][0] else "Layer"),
         "config": {"name": name, "epsilon": eps, "activation": "sigmoid"}} for name, _ in layers]}}  # fmt: skip
    with h5py.File(path, "w") as fh:
        fh.attrs["keras_version"] = b"2.1.5"
        fh.attrs["backend"] = b"tensorflow"
        fh.attrs["model_config"] = json.dumps(config).encode()
        group = fh.create_group("model_weights")
        group.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        for name, weights in layers:
            lg = group.create_group(name)
            names = [f"{name}/{kind}:0" for kind in weights]
            lg.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
            for wname, array in zip(names, weights.values(), strict=True):
                lg.create_dataset(wname, data=np.asarray(array, dtype=np.float32))


def test_keras2_legacy_h5_matches_independent_reference(tmp_path):
    sd = make_tv_state(TINY, 3, 14, seed=13)
    src = tmp_path / "densenet.hdf5"
    write_keras2_h5(src, tv_to_keras(sd, TINY["blocks"]))
    result = import_weights("keras", src, tmp_path / "k.safetensors")
    assert result.meta.bn_eps == pytest.approx(1.001e-5)
    squares = images()
    with torch.no_grad():
        logits = tv_forward(sd, imagenet_input(squares), TINY["blocks"], eps=1.001e-5)[0]
    p, labels = ours(result.out, squares)
    assert_same(p, labels, torch.sigmoid(logits).numpy(), list(CHEXNET_LABELS))
    assert result.meta.source["kind"] == "keras"


def test_keras_with_two_dense_layers_is_refused(tmp_path):
    sd = make_tv_state(TINY, 3, 14, seed=14)
    layers = tv_to_keras(sd, TINY["blocks"])
    layers.insert(
        -1, ("dense_1", {"kernel": np.zeros((sd["classifier.weight"].shape[1],) * 2), "bias": np.zeros(32)})
    )
    src = tmp_path / "two_heads.h5"
    write_keras2_h5(src, layers)
    with pytest.raises(CheckpointError, match="exactly one Dense"):
        import_weights("keras", src, tmp_path / "k.safetensors")


def test_keras3_weights_file_gets_a_hint(tmp_path):
    src = tmp_path / "model.weights.h5"
    with h5py.File(src, "w") as fh:
        fh.create_group("layers").create_group("dense").create_group("vars").create_dataset(
            "0", data=np.zeros(2)
        )
        fh.create_group("vars")
    with pytest.raises(CheckpointError, match=r"model\.save\('model\.h5'\)"):
        import_weights("keras", src, tmp_path / "k.safetensors")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_real_keras_densenet121_matches(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="keras 3 is a test-only extra: pip install 'keras>=3'")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()!r} here; this test needs KERAS_BACKEND=torch")
    model = keras_seed_model(keras, 64, seed=0)
    src = tmp_path / "pretrained_model.h5"
    model.save(src)  # Keras' own legacy HDF5 writer

    result = import_weights("keras", src, tmp_path / "k.safetensors")
    assert result.meta.architecture == "densenet121"
    assert result.meta.bn_eps == pytest.approx(1.001e-5)
    squares = images(2)
    nhwc = imagenet_input(squares).permute(0, 2, 3, 1).numpy()
    source_p = keras.ops.convert_to_numpy(model(nhwc, training=False))
    p, labels = ours(result.out, squares)
    assert_same(p, labels, np.asarray(source_p), list(CHEXNET_LABELS))


# ----------------------------------------------------------------------------- cxrdx + CLI


def test_cxrdx_checkpoint_is_validated_and_resaved(tmp_path):
    model = build_model("densenet-tiny")
    src = tmp_path / "ours.safetensors"
    save_checkpoint(src, model, CheckpointMeta(architecture="densenet-tiny"))
    result = import_weights("cxrdx", src, tmp_path / "again.safetensors")
    a, _ = read_checkpoint(src)
    b, meta = read_checkpoint(result.out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(meta.source["revalidated_sha256"]) == 64
    (tmp_path / "broken.safetensors").write_bytes(src.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        import_weights("cxrdx", tmp_path / "broken.safetensors", tmp_path / "x.safetensors")


def test_cli_import_prints_summary(tmp_path, capsys):
    sd = make_tv_state(TINY, 1, 18, seed=15)
    src = tmp_path / XRV_NIH_FILE
    torch.save(sd, src)
    out = tmp_path / "cli.safetensors"
    assert main(["import", "--from", "xrv", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dropped source outputs" in text and "Fracture" in text
    assert "[-1024, 1024]" in text and "cxrdx evaluate --weights" in text
    assert out.is_file()
    assert main(["import", "--from", "keras", str(src), "--out", str(out)]) == 2  # a pickle is not HDF5
    assert "cxrdx import: error:" in capsys.readouterr().err


def test_offered_choices_are_what_the_library_reads():
    """`cxrdx import --help` offers cxrdx.settings' names (no torch); the xrv table is keyed by the same ones."""
    from cxrdx import settings

    assert settings.IMPORT_SOURCES == KINDS
    assert tuple(XRV_VARIANTS) == settings.XRV_VARIANTS
