"""Grad-CAM (MONAI) against a hand-written Grad-CAM, localisation scores, overlays and `cxrdx explain`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrdx.explain.gradcam import GradCam, normalize_map, to_source
from cxrdx.explain.localisation import heatmap_iou, peak_location, pointing_game
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference.predictor import Predictor
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
from cxrdx.model.networks import build_model


def manual_gradcam(model: torch.nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
    """Grad-CAM written out: d logit / d A, weights = spatial mean, relu(sum w A), bilinear upsampling."""
    x = x.detach().clone().requires_grad_(True)
    acts = F.relu(model.features(x))  # = class_layers.relu(norm5(...))
    logits = model.class_layers.out(model.class_layers.flatten(model.class_layers.pool(acts)))
    (grads,) = torch.autograd.grad(logits[:, class_index].sum(), acts)
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
    return np.stack([normalize_map(m) for m in cam.detach().numpy()[:, 0]])


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model("densenet-tiny", in_channels=1).eval()


def test_monai_gradcam_equals_manual_implementation(tiny_model):
    x = torch.randn(2, 1, 64, 64)
    cam = GradCam(tiny_model)
    nonzero = 0
    for c in range(0, len(FINDINGS), 2):
        expected = manual_gradcam(tiny_model, x, c)
        with torch.inference_mode():  # callers may be in inference mode; Grad-CAM must still work
            got = cam(x.clone(), c)
        assert got.shape == (2, 64, 64) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)
        nonzero += int(got.max() > 0)
    assert nonzero >= 3  # the comparison is not between all-zero maps
    assert not tiny_model.training
    assert all(p.grad is None for p in tiny_model.parameters())  # no gradients left behind


def test_gradcam_uses_the_requested_class_not_argmax(tiny_model):
    x = torch.randn(1, 1, 64, 64)
    cam = GradCam(tiny_model)
    maps = [cam(x, c)[0] for c in range(len(FINDINGS))]
    assert any(not np.allclose(maps[0], m) for m in maps[1:])


def test_normalize_map_handles_flat_and_nan():
    assert normalize_map(np.full((5, 5), 3.0)).max() == 0
    assert not np.isnan(normalize_map(np.array([[np.nan, 1.0], [0.0, 2.0]]))).any()
    m = normalize_map(np.array([[1.0, 3.0], [2.0, 5.0]]))
    assert m.min() == 0 and m.max() == 1


def test_normalize_map_is_min_max_with_non_finite_values_as_zero_and_leaves_its_input():
    x = np.array([[np.inf, 1.0], [-np.inf, 3.0], [np.nan, -1.0]], dtype=np.float32)
    kept = x.copy()
    # non-finite -> 0: values 0, 1, 0, 3, 0, -1; min -1, max 3: (v + 1) / 4
    expected = np.array([[0.25, 0.5], [0.25, 1.0], [0.25, 0.0]], dtype=np.float32)
    out = normalize_map(x)
    assert out.dtype == np.float32 and np.array_equal(out, expected)
    assert np.array_equal(x, kept, equal_nan=True) and out is not x
    finite = np.array([[2.0, 4.0], [3.0, 6.0]])
    np.testing.assert_array_equal(normalize_map(finite), (finite.astype(np.float32) - 2) / 4)


def _predictor(model, size=64):
    meta = CheckpointMeta(
        architecture="densenet-tiny", in_channels=1, preprocessing=Preprocessing(size=size, channels=1)
    )
    return Predictor(model, meta)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_constant_image_gives_no_nan(tiny_model, value):
    heatmap = _predictor(tiny_model).explain(np.full((50, 70), value, np.float32), "Mass")
    assert heatmap.shape == (50, 70)
    assert np.isfinite(heatmap).all() and heatmap.min() >= 0 and heatmap.max() <= 1


def test_heatmap_is_on_the_source_grid_of_a_non_square_image(tiny_model):
    rng = np.random.default_rng(0)
    image = rng.random((64, 40)).astype(np.float32)
    predictor = _predictor(tiny_model)
    heatmap = predictor.explain(image, "Effusion")
    assert heatmap.shape == image.shape
    x, box = predictor.prepare(image)
    square = GradCam(tiny_model)(torch.from_numpy(x[None]), FINDINGS.index("Effusion"))[0]
    assert (box.left, box.width) == (12, 40)  # padded left and right
    np.testing.assert_allclose(heatmap, to_source(square, box), atol=1e-6)


def test_to_source_normalises_over_the_image_not_the_letterbox_padding():
    """A map whose extremes lie in the padding: over the image it still spans 0 to 1."""
    from cxrdx.imaging.letterbox import letterbox

    square, box = letterbox(np.ones((32, 16), np.float32), 32)  # padded left and right (8 px each)
    cam = np.zeros((32, 32), np.float32)
    cam[:, box.left : box.left + box.width] = np.linspace(0.2, 0.6, box.width)[None, :]
    cam[:, : box.left] = 1.0  # the maximum sits in the padding
    out = to_source(cam, box)
    assert out.shape == (32, 16)
    assert out.max() == pytest.approx(1.0) and out.min() == pytest.approx(0.0)
    assert np.clip(box.unletterbox(cam), 0, 1).max() < 0.7  # what cropping alone would show


def test_pointing_game_and_iou_by_hand():
    hm = np.zeros((20, 30), np.float32)
    hm[5:10, 10:20] = 0.6
    hm[7, 14] = 1.0
    assert peak_location(hm) == (7, 14)
    assert pointing_game(hm, (10, 5, 10, 5))
    assert not pointing_game(hm, (0, 0, 10, 5))
    assert pointing_game(hm, [(0, 0, 10, 5), (12, 6, 4, 4)])  # any of several boxes
    assert pointing_game(hm, (15, 7, 3, 3), tolerance=1)
    assert not pointing_game(hm, (15, 7, 3, 3))
    assert not pointing_game(np.zeros((20, 30)), (0, 0, 30, 20))  # an empty map never hits
    assert heatmap_iou(hm, (10, 5, 10, 5)) == pytest.approx(1.0)
    assert heatmap_iou(hm, (10, 5, 10, 10)) == pytest.approx(0.5)
    assert heatmap_iou(hm, (0, 12, 5, 5)) == 0.0
    plateau = np.zeros((9, 9), np.float32)
    plateau[:, 6:] = 1.0  # flat maximum: the peak is its centre, not its top-left corner
    assert peak_location(plateau) == (4, 7)


# --------------------------------------------------------------------------- trained on phantoms


def planted_lesions(rng: np.random.Generator, n: int, size: int = 64):
    """Noisy images with a broad bright blob (a distractor); every other one has a small Gaussian lesion.

    The lesion's box is +-2 sigma. A soft lesion (like the phantom masses) rather than a hard-edged
    disc: a network detects a flat disc by its rim, and its CAM then peaks on the rim, just outside.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size), np.float32)
    labels = np.zeros(n, np.float32)
    boxes: list[tuple | None] = []
    for i in range(n):
        bx, by = rng.uniform(0, size, 2)
        img = 0.35 + 0.15 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * (size / 3) ** 2))
        img += rng.normal(0, 0.05, (size, size))
        box = None
        if i % 2 == 0:
            r = rng.uniform(9, 12)
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            img += 0.45 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (r / 2) ** 2))
            box = (cx - r, cy - r, 2 * r, 2 * r)
            labels[i] = 1
        images[i] = np.clip(img, 0, 1)
        boxes.append(box)
    return images, labels, boxes


def test_gradcam_peaks_inside_the_planted_lesion_of_a_model_trained_on_phantoms():
    """A small MONAI DenseNet (same layer names as densenet121/-tiny) learns Mass on 64 px phantoms.

    Two dense blocks (stride 8, an 8x8 CAM grid at 64 px): densenet-tiny's stride 32 would leave a
    2x2 grid at this size, too coarse to point at anything; at 224 px DenseNet121 has a 7x7 grid.
    """
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images, labels, boxes = planted_lesions(rng, 288)
    x = torch.from_numpy((images - 0.5) / 0.25)[:, None]
    y = torch.from_numpy(labels)
    mass = FINDINGS.index("Mass")
    n_train = 224
    model = DenseNet(2, 1, len(FINDINGS), init_features=16, growth_rate=8, block_config=(2, 2), bn_size=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        idx = torch.randint(0, n_train, (16,))
        loss = F.binary_cross_entropy_with_logits(model(x[idx])[:, mass], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    held_out = [k for k in range(n_train, len(images)) if labels[k]]
    heatmaps = GradCam(model)(x[held_out], mass)
    hits = [pointing_game(h, boxes[k]) for h, k in zip(heatmaps, held_out, strict=True)]
    print(f"pointing game {np.mean(hits):.3f} on {len(hits)} held-out lesions")
    assert np.mean(hits) >= 0.7, f"pointing game {np.mean(hits):.2f} on {len(hits)} held-out lesions"


# --------------------------------------------------------------------------- CLI


def _checkpoint(path: Path, size: int = 64) -> Path:
    torch.manual_seed(0)
    meta = CheckpointMeta(
        architecture="densenet-tiny", in_channels=1, preprocessing=Preprocessing(size=size, channels=1)
    )
    save_checkpoint(path, build_model("densenet-tiny", in_channels=1), meta)
    return path


def test_explain_cli_writes_overlays_npy_and_localisation(tmp_path, capsys):
    from PIL import Image

    from cxrdx.cli import main

    ckpt = _checkpoint(tmp_path / "m.safetensors")
    rng = np.random.default_rng(1)
    img = tmp_path / "film.png"
    Image.fromarray(rng.integers(0, 256, (80, 56), dtype=np.uint8)).save(img)
    boxes = tmp_path / "BBox_List.csv"
    boxes.write_text("Image Index,Finding Label,Bbox [x,y,w,h]\nfilm.png,Nodule,10,20,15,15\n")
    out = tmp_path / "out"
    rc = main(
        [
            "explain",
            "--weights",
            str(ckpt),
            str(img),
            "--finding",
            "mass",
            "--out",
            str(out),
            "--boxes",
            str(boxes),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for finding in ("Mass", "Nodule"):  # the requested one and the boxed one
        heatmap = np.load(out / f"film_{finding}.npy")
        assert heatmap.shape == (80, 56) and np.isfinite(heatmap).all()
        assert Image.open(out / f"film_{finding}.png").size[0] > 100
    assert (
        "pointing (strict)" in captured.out
        and "pointing (1/2 cell)" in captured.out
        and "Nodule" in captured.out
    )
    rc = main(["explain", "--weights", str(ckpt), str(img), "--top-k", "2", "--out", str(tmp_path / "top")])
    assert rc == 0
    assert len(list((tmp_path / "top").glob("*.npy"))) == 2
    rc = main(["explain", "--weights", str(ckpt), str(img), "--finding", "Fractures", "--out", str(out)])
    assert rc == 2 and "Fractures" in capsys.readouterr().err


def test_score_localisation_on_a_phantom_dataset(tmp_path):
    from cxrdx.data.boxes import read_bboxes
    from cxrdx.explain.localisation import score_localisation
    from cxrdx.phantom.dataset import write_dataset

    write_dataset(tmp_path, n=12, size=64, seed=0)
    table = read_bboxes(tmp_path / "BBox_List.csv")
    if table.empty:
        pytest.skip("this phantom set drew no boxes")
    predictor = Predictor.load(_checkpoint(tmp_path / "m.safetensors"))
    scores = score_localisation(predictor, table, tmp_path / "images", progress=False)
    assert sum(s.n for s in scores.values()) == len(table.groupby(["image", "finding"]))
    for s in scores.values():
        assert 0 <= s.pointing_game <= 1 and 0 <= s.mean_iou <= 1


@pytest.mark.realdata
def test_explain_on_a_real_rgba_nih_image(shared_data, tmp_path):
    from PIL import Image

    path = shared_data / "nih" / "images" / "00000100_000.png"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    assert Image.open(path).mode == "RGBA"
    predictor = Predictor.load(_checkpoint(tmp_path / "m.safetensors", size=64))
    heatmap = predictor.explain(path, "Effusion")
    image, _ = predictor.read(path)
    assert heatmap.shape == image.shape == (1024, 1024)
    assert np.isfinite(heatmap).all()
    from cxrdx.explain.overlay import overlay_png

    png = overlay_png(image, heatmap, tmp_path / "o.png", "Effusion \u2014 p=0.50 (no threshold)")
    assert Image.open(png).size[0] > 300


def test_half_cell_tolerance_is_the_cam_resolution():
    from cxrdx.explain.localisation import half_cell_tolerance

    assert half_cell_tolerance((128, 128), 128) == 16  # 4x4 map: a cell is 32 px
    assert half_cell_tolerance((1024, 1024), 320) == 51  # NIH film at 320 px
    assert half_cell_tolerance((600, 300), 300) == 32  # the longer side sets the scale
