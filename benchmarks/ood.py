"""Out-of-distribution gate: a phantom-trained model tells held-out phantoms from inputs it never saw.

    cxrdx synth --n N --size S  ->  split (by patient 70/10/20)  ->  prepare  ->
    cxrdx train --arch ARCH (fits the OOD reference into best.safetensors at the end)

then scores, with ``Predictor`` (the path ``cxrdx predict`` uses), the held-out test
phantoms against each kind of foreign input and prints, per kind, the AUROC of the OOD
score (held-out phantoms = 0, the kind = 1) and the fraction flagged (in_distribution
false), plus the fraction of held-out phantoms flagged. Targets (issue 26): AUROC >= 0.95
and at least 80 % flagged for every kind, at most 5 % of held-out phantoms flagged, already
for a 1-epoch model (``--epochs 1``).

Kinds: real NIH films (``../shared/data/nih/images``, skipped when absent), inverted
phantoms, phantoms rotated 90 degrees, noise (uniform, Gaussian, smooth), non-chest
images (synthetic scenes, text pages, gradients), crude synthetic lateral films, and
other modalities (synthetic CT, MR, ultrasound, mammography) written and read as DICOM
files. A benchmark, not a test.

Run:  python benchmarks/ood.py [--work DIR] [--n 1500] [--size 64] [--arch densenet-tiny]
(about 4 min on 2 busy cores; ``--arch densenet121 --max-minutes 8``: about 9 min, 1024 features)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cxrdx_cmd, machine_line  # noqa: E402

NIH = Path(os.environ.get("CXRDX_SHARED_DATA", REPO.parent / "shared" / "data")) / "nih" / "images"


def step(title: str, args: list[str]) -> float:
    print(f"== {title}: cxrdx {' '.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cxrdx_cmd(*args), check=True)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- foreign inputs


def _smooth(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    from cxrdx.imaging.letterbox import resize_float

    low = rng.random((max(2, size // cell), max(2, size // cell))).astype(np.float32)
    return resize_float(low, size, size)


def noise_images(rng: np.random.Generator, n: int, size: int) -> list[tuple[str, np.ndarray]]:
    out = []
    for i in range(n):
        kind = ("uniform", "gaussian", "smooth")[i % 3]
        if kind == "uniform":
            im = rng.random((size, size))
        elif kind == "gaussian":
            im = np.clip(rng.normal(rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.25), (size, size)), 0, 1)
        else:
            im = _smooth(rng, size, int(rng.integers(4, 16)))
        out.append((kind, im.astype(np.float32)))
    return out


def _scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """Natural-ish: a sky gradient over ground, a few objects of random brightness, some texture."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    horizon = rng.uniform(0.3, 0.7)
    im = np.where(yy < horizon, rng.uniform(0.5, 0.9) - 0.3 * yy, rng.uniform(0.1, 0.5) + 0.1 * yy)
    for _ in range(int(rng.integers(2, 7))):
        cx, cy, rx, ry = (
            rng.uniform(0, 1),
            rng.uniform(0.2, 1),
            rng.uniform(0.03, 0.2),
            rng.uniform(0.03, 0.2),
        )
        mask = (
            ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            if rng.random() < 0.5
            else ((abs(xx - cx) < rx) & (abs(yy - cy) < ry))
        )
        im = np.where(mask, rng.uniform(0, 1), im)
    return np.clip(im + 0.15 * (_smooth(rng, size, 3) - 0.5), 0, 1)


def _text(rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    big = size * 4
    page = Image.new("L", (big, big), int(rng.integers(200, 256)))
    draw = ImageDraw.Draw(page)
    words = ("chest", "radiograph", "report", "patient", "findings", "normal", "lungs", "clear", "heart")
    y = int(rng.integers(2, 12))
    while y < big - 12:
        line = " ".join(rng.choice(words, size=int(rng.integers(3, 9))))
        draw.text((int(rng.integers(2, 16)), y), line, fill=int(rng.integers(0, 60)))
        y += int(rng.integers(11, 18))
    image = np.asarray(page.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    return 1 - image if rng.random() < 0.3 else image


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        g = np.cos(angle) * xx + np.sin(angle) * yy
    else:
        g = np.hypot(xx - rng.uniform(0, 1), yy - rng.uniform(0, 1))
    g = (g - g.min()) / max(g.max() - g.min(), 1e-6)
    return (rng.uniform(0, 0.4) + rng.uniform(0.4, 1.0) * g).clip(0, 1)


def non_chest_images(rng: np.random.Generator, n: int, size: int) -> list[tuple[str, np.ndarray]]:
    makers = {"scene": _scene, "text": _text, "gradient": _gradient}
    names = list(makers)
    return [(names[i % 3], makers[names[i % 3]](rng, size).astype(np.float32)) for i in range(n)]


# --------------------------------------------------------------------------- lateral films, other modalities


def _blur(im: np.ndarray, k: int = 2) -> np.ndarray:
    from PIL import Image, ImageFilter

    u = Image.fromarray((np.clip(im, 0, 1) * 255).astype(np.uint8))
    return np.asarray(u.filter(ImageFilter.GaussianBlur(k)), dtype=np.float32) / 255


def lateral_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A crude lateral chest film: one lung field, the spine behind it, the heart in front, a diaphragm."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    im = np.full((size, size), rng.uniform(0.0, 0.08))
    cx, cy = rng.uniform(0.45, 0.55), rng.uniform(0.5, 0.58)
    body = ((xx - cx) / rng.uniform(0.3, 0.38)) ** 2 + ((yy - cy) / 0.55) ** 2 < 1
    im = np.where(body, rng.uniform(0.5, 0.65), im)
    lung = ((xx - cx + 0.02) / rng.uniform(0.22, 0.28)) ** 2 + (
        (yy - cy + 0.1) / rng.uniform(0.33, 0.4)
    ) ** 2 < 1
    im = np.where(lung & body, rng.uniform(0.18, 0.3) + 0.15 * yy, im)
    sx = cx + rng.uniform(0.17, 0.22)
    spine = (abs(xx - sx) < 0.045) & body & (np.sin(yy * rng.uniform(60, 80)) > -0.6)
    im = np.where(spine, rng.uniform(0.75, 0.9), im)
    heart = ((xx - cx + 0.1) / 0.14) ** 2 + ((yy - cy - 0.12) / 0.16) ** 2 < 1
    im = np.where(heart & body, rng.uniform(0.5, 0.62), im)
    dia = (yy > cy + 0.25 + 0.08 * (xx - cx)) & body
    im = np.where(dia, rng.uniform(0.55, 0.7), im)
    im = _blur(im, max(1, size // 64)) + rng.normal(0, 0.02, im.shape)
    return np.clip(im, 0, 1).astype(np.float32)


def ct_slice(rng: np.random.Generator, n: int = 256) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] / n
    hu = np.full((n, n), -1000.0)
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.52) / 0.3) ** 2 < 1
    hu[body] = 40
    for sx in (0.32, 0.68):
        lung = ((xx - sx) / 0.14) ** 2 + ((yy - 0.48) / 0.2) ** 2 < 1
        hu[lung] = -850
    hu[((xx - 0.5) / 0.05) ** 2 + ((yy - 0.72) / 0.05) ** 2 < 1] = 700
    hu[((xx - 0.48) / 0.1) ** 2 + ((yy - 0.52) / 0.1) ** 2 < 1] = 45
    hu += rng.normal(0, 15, hu.shape)
    return hu


def mr_head(rng: np.random.Generator, n: int = 256) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] / n
    im = np.zeros((n, n))
    head = ((xx - 0.5) / 0.36) ** 2 + ((yy - 0.5) / 0.44) ** 2 < 1
    brain = ((xx - 0.5) / 0.32) ** 2 + ((yy - 0.5) / 0.4) ** 2 < 1
    im[head] = 900
    im[brain] = 500 + 150 * np.sin(xx[brain] * 40) * np.cos(yy[brain] * 30)
    im[((xx - 0.5) / 0.05) ** 2 + ((yy - 0.5) / 0.15) ** 2 < 1] = 1500
    im += rng.normal(0, 30, im.shape)
    return np.clip(im, 0, 4000)


def us_fan(rng: np.random.Generator, n: int = 256) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] / n
    r, a = np.hypot(xx - 0.5, yy), np.arctan2(xx - 0.5, yy)
    fan = (r < 0.95) & (abs(a) < 0.6) & (r > 0.05)
    im = np.zeros((n, n))
    speck = rng.rayleigh(1.0, (n, n)) * 60
    im[fan] = speck[fan] * (1 - 0.6 * r[fan])
    blob = ((xx - 0.5) / 0.12) ** 2 + ((yy - 0.5) / 0.08) ** 2 < 1
    im[blob & fan] *= 0.2
    return np.clip(im, 0, 255)


def mammo(rng: np.random.Generator, n: int = 256) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] / n
    im = np.zeros((n, n))
    breast = ((xx) / 0.55) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1
    im[breast] = 1800 + 900 * _blur(rng.random((n, n)), 3)[breast] - 800 * xx[breast]
    return np.clip(im, 0, 4095)


MODALITIES = {  # modality -> (maker, bits stored)
    "CT": (ct_slice, 16),
    "MR": (mr_head, 16),
    "US": (us_fan, 8),
    "MG": (mammo, 16),
}


def write_dicom(path: Path, modality: str, arr: np.ndarray, bits: int) -> Path:
    """A minimal single-frame DICOM of ``modality`` (CT with HU and a lung window, others unsigned)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "OOD"
    ds.PatientName = "OOD^Bench"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    if modality == "CT":
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.PixelData = np.round(arr).astype(np.int16).tobytes()
    else:
        ds.PixelRepresentation = 0
        ds.PixelData = np.round(arr).astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def modality_dicoms(rng: np.random.Generator, n: int, folder: Path) -> list[tuple[str, Path]]:
    """``n`` DICOM files of other modalities (CT, MR, US, MG in turn), read through the DICOM path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        modality = list(MODALITIES)[i % len(MODALITIES)]
        make, bits = MODALITIES[modality]
        out.append((modality, write_dicom(folder / f"{modality}_{i}.dcm", modality, make(rng), bits)))
    return out


# --------------------------------------------------------------------------- run


def _mean_auroc(prov: dict) -> str:
    from cxrdx.phantom.lesions import DRAWN_FINDINGS

    auroc = {k: v for k, v in (prov.get("val_auroc") or {}).items() if k in DRAWN_FINDINGS and v is not None}
    return f"{sum(auroc.values()) / len(auroc):.3f} over {len(auroc)} drawn findings" if auroc else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, help="keep everything here (default: a temporary folder)")
    parser.add_argument("--n", type=int, default=1500, help="phantoms to synthesise (70/10/20 split)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--arch", default="densenet-tiny")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--max-minutes", type=float, default=6.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--per-kind", type=int, default=120, help="foreign images per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()

    print(machine_line(), flush=True)
    tmp = None
    work = args.work
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="cxrdx-ood-")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    try:
        phantoms = work / "phantoms"
        times["synth"] = step("synth", ["synth", "--out", str(phantoms), "--n", str(args.n), "--size",
                                        str(args.size), "--seed", str(args.seed), "--workers", "2", "--overwrite"])  # fmt: skip
        times["split"] = step("split", ["split", "--labels", str(phantoms / "Data_Entry.csv"), "--out",
                                        str(work / "split"), "--val", "0.1", "--test", "0.2", "--seed", str(args.seed)])  # fmt: skip
        times["prepare"] = step("prepare", ["prepare", "--labels", *(str(work / "split" / f"{s}.csv") for s in ("train", "val")),
                                            "--images", str(phantoms / "images"), "--size", str(args.size),
                                            "--out", str(work / "cache"), "--overwrite", "--no-progress"])  # fmt: skip
        run = work / "run"
        if run.exists():
            import shutil

            shutil.rmtree(run)
        times["train"] = step("train", ["train", "--data", str(work / "cache"), "--out", str(run), "--arch", args.arch,
                                        "--epochs", str(args.epochs), "--max-minutes", str(args.max_minutes),
                                        "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--lr", str(args.lr),
                                        "--threads", str(args.threads), "--no-progress"])  # fmt: skip

        import pandas as pd

        from cxrdx.imaging.read import read_image
        from cxrdx.inference.predictor import Predictor
        from cxrdx.metrics.auroc import fast_auroc

        start = time.perf_counter()
        predictor = Predictor.load(run / "best.safetensors", backend=args.backend, threads=args.threads)
        ood, prov = predictor.meta.ood, predictor.meta.provenance
        if predictor.ood is None or predictor.ood.threshold is None:
            print("best.safetensors has no OOD reference: `cxrdx train` did not fit it")
            return 1
        test = pd.read_csv(work / "split" / "test.csv")
        held = [read_image(phantoms / "images" / name)[0] for name in test["image"]]
        rng = np.random.default_rng(args.seed + 1)
        k = args.per_kind
        pick = [held[i] for i in rng.permutation(len(held))[:k]]
        kinds: dict[str, list[tuple[str, np.ndarray]]] = {}
        if NIH.is_dir():
            files = sorted(NIH.glob("*.png"))[:k]
            kinds["real NIH films"] = [("nih", read_image(f)[0]) for f in files]
        kinds["inverted phantoms"] = [("inverted", 1.0 - im) for im in pick]
        kinds["phantoms rotated 90"] = [("rot90", np.ascontiguousarray(np.rot90(im, 1 + 2 * (i % 2)))) for i, im in enumerate(pick)]  # fmt: skip
        kinds["noise images"] = noise_images(rng, k, args.size)
        kinds["non-chest images"] = non_chest_images(rng, k, args.size)
        kinds["lateral films"] = [("lateral", lateral_image(rng, 256)) for _ in range(k)]
        kinds["other modalities"] = modality_dicoms(rng, k, work / "modalities")  # paths: read as DICOM

        def scores(images: list) -> tuple[np.ndarray, np.ndarray]:
            preds = predictor.predict(images, batch_size=32, workers=0)
            assert all(p.ok for p in preds)
            return np.array([p.ood_score for p in preds]), np.array(
                [p.in_distribution is False for p in preds]
            )

        held_scores, held_flag = scores(held)
        depths = ", ".join(f"{d['name']} {d['features']}" for d in ood.get("layers", []))
        print(f"\n{machine_line()}")
        print(
            f"model: {args.arch} trained on {args.n} phantoms at {args.size} px (seed {args.seed}, lr {args.lr}), "
            f"best epoch {prov.get('epoch')} (mean val AUROC {_mean_auroc(prov)}), backend {predictor.backend}; "
            f"OOD reference: {ood['method']} on {ood['features']} features "
            f"({depths or 'final pooled'}), "
            f"fitted on {ood['fitted_on']['train_images']} train images, threshold {ood['threshold']:.3f} = "
            f"99th percentile of {ood['fitted_on']['val_images']} val images"
        )
        if not NIH.is_dir():
            print(f"real NIH films: skipped ({NIH} is absent)")
        print(f"\nheld-out phantoms (test split, n={len(held)}): flagged {held_flag.mean():.1%} (target <= 5%), "
              f"median score {np.median(held_scores):.2f}")  # fmt: skip
        print(f"\n{'kind':<22} {'n':>4} {'AUROC':>7} {'flagged':>8}  median  detail")
        worst, least = 1.0, 1.0
        for name, items in kinds.items():
            s, flagged = scores([im for _, im in items])
            y = np.r_[np.zeros(len(held_scores)), np.ones(len(s))]
            auc = fast_auroc(y, np.r_[held_scores, s])
            worst, least = min(worst, auc), min(least, float(flagged.mean()))
            subs = sorted({tag for tag, _ in items})
            detail = ""
            if len(subs) > 1:
                parts = []
                for tag in subs:
                    sel = np.array([t == tag for t, _ in items])
                    ys = np.r_[np.zeros(len(held_scores)), np.ones(sel.sum())]
                    parts.append(f"{tag} {fast_auroc(ys, np.r_[held_scores, s[sel]]):.3f}")
                detail = ", ".join(parts)
            print(f"{name:<22} {len(s):>4} {auc:7.3f} {flagged.mean():8.1%}  {np.median(s):6.2f}  {detail}")
        times["score"] = time.perf_counter() - start
        ok = worst >= 0.95 and least >= 0.80 and held_flag.mean() <= 0.05
        print(
            "\ntargets (AUROC >= 0.95 and >= 80% flagged every kind, <= 5% held-out flagged): "
            f"{'met' if ok else 'NOT met'}"
        )
        print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
        return 0 if ok else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
