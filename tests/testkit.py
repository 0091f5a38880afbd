"""Small helpers shared by tests in several folders (tests/ is on sys.path, so `from testkit import ...`)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cxrdx.cli import main


def run_cli(capsys, argv) -> tuple[int, str, str]:
    """``cxrdx ARGV`` in-process: (exit code, stdout, stderr); never a traceback."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG")
    return buf.getvalue()


def lungs_and_centre(img: np.ndarray) -> tuple[float, float, float]:
    """Mean of the left and right lung fields and the mediastinum, over the middle rows."""
    h, w = img.shape
    rows = img[int(h * 0.35) : int(h * 0.65)]
    return (
        float(rows[:, int(w * 0.10) : int(w * 0.33)].mean()),
        float(rows[:, int(w * 0.67) : int(w * 0.90)].mean()),
        float(rows[:, int(w * 0.45) : int(w * 0.55)].mean()),
    )


def looks_like_chest(img: np.ndarray) -> bool:
    """Bright = dense: the mediastinum is brighter than both lung fields."""
    left, right, centre = lungs_and_centre(img)
    return max(left, right) < centre


def tiny_checkpoint(path, size: int = 32, thresholds: dict | None = None, channels: int = 1, **meta_fields):
    """A densenet-tiny checkpoint (``channels``, ``size`` px, seed 0) at ``path``; ``meta_fields`` go to CheckpointMeta."""
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    meta = CheckpointMeta(
        architecture="densenet-tiny",
        in_channels=channels,
        preprocessing=Preprocessing(size=size, channels=channels),
        thresholds=thresholds,
        **meta_fields,
    )
    save_checkpoint(path, build_model("densenet-tiny", in_channels=channels), meta)
    return path


def phantom_dicom(seed: int = 0, size: int = 64, **attrs):
    """A DX-for-presentation phantom chest film with its own patient and study; ``attrs`` set/replace elements."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from cxrdx.phantom.render import make_phantom

    img, _ = make_phantom(np.random.default_rng(seed), size, [])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["testkit phantom", str(seed), "instance"])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["testkit phantom", str(seed), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["testkit phantom", str(seed), "series"])
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = (
        f"PH{seed:04d}",
        f"Phantom^{seed}",
        "",
        "O",
    )
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = (
        "20260101",
        "120000",
        str(seed),
        f"A{seed:05d}",
    )
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.set_pixel_data(img, "MONOCHROME2", 8)
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def save_screenshot(png: bytes, dest, max_bytes: int = 300_000, width: int = 1200) -> None:
    """``make screenshots``'s shrinker (scripts/screenshots.py), which the browser tests check on tmp paths."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshots.py"
    spec = importlib.util.spec_from_file_location("cxrdx_screenshots", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.save_screenshot(png, dest, max_bytes=max_bytes, width=width)


def write_cache(out, images: np.ndarray, labels: np.ndarray, splits: list[str]):
    """A cache in `cxrdx prepare`'s layout (data/cache.py) from uint8 (n, s, s) images and (n, 14) 0/1 labels.

    Written directly, so training and inference tests do not depend on decoding; tests/data/test_cache.py
    checks that prepare writes this same layout.
    """
    import json
    from pathlib import Path

    import pandas as pd

    from cxrdx.labels import FINDINGS

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, size = len(images), images.shape[1]
    np.save(out / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
    index = pd.DataFrame(
        {"image": [f"img{i:04d}.png" for i in range(n)], "patient": [f"p{i}" for i in range(n)]}
    )
    index["view"], index["age"], index["sex"] = "PA", 50, "M"
    for j, name in enumerate(FINDINGS):
        index[name] = labels[:, j]
    index["row"] = np.arange(n)
    index["split"] = splits
    index["path"] = ""
    index.to_csv(out / "index.csv", index=False)
    counts = {s: splits.count(s) for s in dict.fromkeys(splits)}
    info = {"format_version": 1, "size": size, "resize": "letterbox", "counts": counts, "failures": []}
    (out / "cache.json").write_text(json.dumps(info))
    return out


def keras_seed_model(keras, size: int, seed: int):
    """The seed notebook's network in Keras (DenseNet121, global average pooling, 14 sigmoid outputs) with
    random non-trivial weights (BatchNorm statistics and head), for the Keras import tests."""
    import math

    rng = np.random.default_rng(seed)
    base = keras.applications.DenseNet121(
        weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3)
    )
    head = keras.layers.Dense(14, activation="sigmoid", name="predictions")(base.output)
    model = keras.Model(base.input, head)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 1.5, c)])  # fmt: skip
        elif isinstance(layer, keras.layers.Dense):
            layer.set_weights([rng.normal(0, 2 / math.sqrt(1024), (1024, 14)), rng.normal(0, 0.3, 14)])
    return model
