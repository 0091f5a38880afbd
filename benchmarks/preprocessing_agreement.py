"""How close cxrdx's inputs are to each publisher's, before (the letterbox every import got) and after
(the recipe each importer now records), on real NIH films; and what the resize costs per film.

The network is the same on both sides (a DenseNet121 in the source's layout, random but fixed weights
with spread-out BatchNorm statistics so the outputs are not all 0.5), so every difference is the input:

- xrv: torchxrayvision's documented pipeline re-stated (normalize, XRayCenterCrop, XRayResizer =
  skimage.transform.resize, needs scikit-image) on square films, non-square crops of them and 16-bit copies;
- chexnet: arnoweng/CheXNet's test transform re-stated (RGB, Resize(256), TenCrop(224), averaged);
- ours: the training cache (``cxrdx prepare``'s worker) vs what ``Predictor`` feeds, max input difference.

A benchmark, not a test. Run:  python benchmarks/preprocessing_agreement.py [--films 20] [--ours 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from cxrdx.imaging.preprocessing import Preprocessing  # noqa: E402
from cxrdx.imaging.read import read_image  # noqa: E402
from cxrdx.model.importers.torchvision import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocessing  # noqa: E402
from cxrdx.model.importers.xrv import xrv_preprocessing  # noqa: E402
from cxrdx.model.networks import build_model  # noqa: E402

FILMS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nih" / "images"


def network(outputs: int, channels: int, seed: int, probe: np.ndarray) -> torch.nn.Module:
    """DenseNet121 with random BatchNorm statistics; the classifier scaled so that on ``probe`` inputs the
    logits spread over about +-3 around 0 (not saturated: a saturated output hides any input difference)."""
    from cxrdx.model.networks import features_and_logits

    torch.manual_seed(seed)
    model = build_model("densenet121", outputs, channels).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    with torch.inference_mode():
        feats, _ = features_and_logits(model, torch.from_numpy(np.ascontiguousarray(probe, dtype=np.float32)))
        centred = feats - feats.mean(0)
        w = torch.randn(outputs, feats.shape[1], generator=g)
        spread = (centred @ w.T).std(0).clamp_min(1e-6)
        out = model.class_layers.out
        out.weight.copy_(w * (1.5 / spread)[:, None])
        out.bias.copy_(-(out.weight @ feats.mean(0)))
    return model


def sigmoid(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))).numpy()


def legacy(prep: Preprocessing) -> Preprocessing:
    """The record every import had before the recipe: letterbox, 8-bit files in 8 bits, no crops."""
    d = {k: v for k, v in prep.to_dict().items() if k in ("size", "channels", "pixel_range", "mean", "std")}
    return Preprocessing.from_dict(d)


def ours_inputs(prep: Preprocessing, path: Path) -> np.ndarray:
    image, _ = read_image(path, uint8_ok=True)  # as Predictor reads
    return prep.views(image)[0]


def xrv_reference(path: Path) -> np.ndarray:
    from skimage.transform import resize

    img = np.asarray(Image.open(path))
    img = img.mean(2) if img.ndim == 3 else img
    maxval = 65535 if img.dtype == np.uint16 else 255
    img = ((2 * (img.astype(np.float32) / maxval) - 1.0) * 1024)[None]
    _, y, x = img.shape
    side = min(y, x)
    img = img[
        :, y // 2 - side // 2 : y // 2 - side // 2 + side, x // 2 - side // 2 : x // 2 - side // 2 + side
    ]
    return resize(img, (1, 224, 224), mode="constant", preserve_range=True).astype(np.float32)


def chexnet_reference(path: Path) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    im = im.resize((256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256), Image.BILINEAR)

    def five(img: Image.Image) -> list[Image.Image]:
        w, h = img.size
        t, l = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))  # noqa: E741
        spots = [(0, 0), (w - 224, 0), (0, h - 224), (w - 224, h - 224), (l, t)]
        return [img.crop((x, y, x + 224, y + 224)) for x, y in spots]

    crops = five(im) + five(im.transpose(Image.FLIP_LEFT_RIGHT))
    x = np.stack([np.asarray(c, dtype=np.float32).transpose(2, 0, 1) / 255.0 for c in crops])
    return (x - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(IMAGENET_STD, np.float32)[
        :, None, None
    ]


def to16(a: np.ndarray) -> np.ndarray:
    """A real 16-bit film: v * 256 plus a random low byte (v * 257 would read back as an 8-bit one)."""
    return a.astype(np.uint16) * 256 + np.random.default_rng(0).integers(0, 256, a.shape, dtype=np.uint16)


def variants(paths: list[Path], tmp: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {
        "square 8-bit": [],
        "non-square 8-bit": [],
        "square 16-bit": [],
        "non-square 16-bit": [],
    }
    for i, p in enumerate(paths):
        a = np.asarray(Image.open(p).convert("L"))
        wide = a[100 + 3 * i : 840, :]
        for kind, arr in (("square 8-bit", a), ("non-square 8-bit", wide), ("square 16-bit", to16(a)),
                          ("non-square 16-bit", to16(wide))):  # fmt: skip
            q = tmp / f"{kind.replace(' ', '_')}_{i}.png"
            Image.fromarray(np.ascontiguousarray(arr)).save(q)
            out[kind].append(q)
    return out


def report(name: str, before: np.ndarray, after: np.ndarray, ref: np.ndarray, op: np.ndarray | None) -> None:
    line = (
        f"{name}: max |dp| before {np.abs(before - ref).max():.4f} (mean {np.abs(before - ref).mean():.4f})"
    )
    line += f" -> after {np.abs(after - ref).max():.2e} (mean {np.abs(after - ref).mean():.1e})"
    if op is not None:
        flips_b, flips_a = (
            int(((before >= op) != (ref >= op)).sum()),
            int(((after >= op) != (ref >= op)).sum()),
        )
        line += f"; calls flipped {flips_b} -> {flips_a} of {ref.size}"
    print(line, flush=True)


def timing(prep: Preprocessing, images: list[np.ndarray], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for im in images:
            prep.square(im)
        best = min(best, (time.perf_counter() - start) / len(images))
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--films", type=int, default=20)
    ap.add_argument("--ours", type=int, default=200)
    args = ap.parse_args()
    import tempfile

    torch.set_num_threads(1)
    all_paths = sorted(FILMS.glob("*.png"))
    gray = [p for p in all_paths if Image.open(p).mode == "L"]
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        sets = variants(gray[: args.films], Path(tmp))
        # torchxrayvision
        xrv = xrv_preprocessing(None)
        model = network(18, 1, 1, np.concatenate([xrv_reference(p)[None] for p in sets["square 8-bit"][:4]]))
        op = np.linspace(0.2, 0.8, 18)
        for kind, paths in sets.items():
            ref = np.concatenate([sigmoid(model, xrv_reference(p)[None]) for p in paths])
            before = np.concatenate([sigmoid(model, ours_inputs(legacy(xrv), p)) for p in paths])
            after = np.concatenate([sigmoid(model, ours_inputs(xrv, p)) for p in paths])
            report(f"xrv {kind} ({len(paths)} films)", before, after, ref, op)
        # CheXNet
        chex = imagenet_preprocessing(None, crops=10)
        model = network(
            14, 3, 2, np.concatenate([chexnet_reference(p)[:1] for p in sets["square 8-bit"][:4]])
        )
        for kind in ("square 8-bit", "non-square 8-bit"):
            paths = sets[kind]
            ref = np.stack([sigmoid(model, chexnet_reference(p)).mean(0) for p in paths])
            before = np.concatenate([sigmoid(model, ours_inputs(legacy(chex), p)) for p in paths])
            after = np.stack([sigmoid(model, ours_inputs(chex, p)).mean(0) for p in paths])
            report(f"chexnet {kind} ({len(paths)} films, ten-crop)", before, after, ref, None)
    # our own models: the training cache vs what Predictor feeds (8-bit files read as uint8)
    ours = Preprocessing(size=320)
    worst_before = worst_after = 0.0
    differing = 0
    n_pixels = 0
    for p in all_paths[: args.ours]:
        image, _ = read_image(p)
        cache = ours.square(image)[0]
        fast, _ = read_image(p, uint8_ok=True)
        before = legacy(ours).square(fast)[0]
        after = ours.square(fast)[0]
        to_f = lambda a: a.astype(np.float32) / 255 if a.dtype == np.uint8 else a  # noqa: E731
        worst_before = max(worst_before, float(np.abs(to_f(before) - to_f(cache)).max()))
        worst_after = max(worst_after, float(np.abs(to_f(after) - to_f(cache)).max()))
        differing += int((np.round(to_f(before) * 255) != cache).sum())
        n_pixels += cache.size
    print(f"ours ({min(args.ours, len(all_paths))} films, 320 px): training cache vs Predictor input, max |dx| "
          f"before {worst_before:.4f} ({100 * differing / n_pixels:.1f} % of pixels differ) -> after {worst_after:.1e}")  # fmt: skip
    # resize cost per 1024 px film, one thread
    images8 = [read_image(p, uint8_ok=True)[0] for p in gray[:10]]
    print(
        "ms per 1024 px film (square only, best of 3): "
        f"xrv recipe {timing(xrv, images8):.1f} vs before {timing(legacy(xrv), images8):.1f}; "
        f"ours (float + round) {timing(ours, images8):.1f} vs before (8-bit) {timing(legacy(ours), images8):.1f}; "
        f"chexnet ten-crop {timing(chex, images8):.1f} vs before {timing(legacy(chex), images8):.1f}",
        flush=True,
    )
    print(machine_line(), flush=True)


if __name__ == "__main__":
    main()
