"""A phantom dataset on disk in NIH's layout: plan patients and labels, draw in parallel, write the CSVs.

Each image has its own seed (``[seed, kind, index]``), so the bytes do not depend on
``workers``.
"""

from __future__ import annotations

import json
import multiprocessing
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrdx.errors import ConfigError
from cxrdx.labels import FINDINGS, NO_FINDING
from cxrdx.phantom.anatomy import sample_anatomy
from cxrdx.phantom.config import CHRONIC, PhantomConfig
from cxrdx.phantom.render import make_phantom
from cxrdx.reporter import Reporter, reporter_or_default

DATA_ENTRY_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
BBOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")


@dataclass(frozen=True)
class ImageSpec:
    index: int
    patient: int
    followup: int
    findings: tuple[str, ...]
    age: int
    sex: str
    view: str

    @property
    def name(self) -> str:
        return f"{self.patient:08d}_{self.followup:03d}.png"


def _draw_findings(rng: np.random.Generator, prevalence: dict[str, float]) -> set[str]:
    u = rng.random(len(FINDINGS))
    return {f for f, x in zip(FINDINGS, u, strict=True) if x < prevalence[f]}


def plan_dataset(n: int, seed: int, config: PhantomConfig) -> list[ImageSpec]:
    """Patients, follow-ups and labels for ``n`` images: cheap, and fixed by the seed."""
    prevalence = config.effective_prevalence()
    weights = np.asarray(config.followups, dtype=float)
    weights = weights / weights.sum()
    specs: list[ImageSpec] = []
    patient = 0
    while len(specs) < n:
        patient += 1
        prng = np.random.default_rng([seed, 1, patient])
        count = int(prng.choice(len(weights), p=weights)) + 1
        count = min(count, n - len(specs))
        base = _draw_findings(prng, prevalence)
        age0 = int(prng.integers(18, 86))
        sex = "M" if prng.random() < 0.56 else "F"
        for fu in range(count):
            irng = np.random.default_rng([seed, 2, len(specs)])
            fresh = _draw_findings(irng, prevalence)
            keep = irng.random(len(FINDINGS)) < config.persistence
            found = set()
            for f, k in zip(FINDINGS, keep, strict=True):
                if (f in base) if (f in CHRONIC and k) else (f in fresh):
                    found.add(f)
            for (given, then), p in config.co_occurrence.items():
                if given in found and irng.random() < p:
                    found.add(then)
            view = "AP" if irng.random() < config.ap_fraction else "PA"
            age = min(95, age0 + fu // 2)
            specs.append(
                ImageSpec(len(specs), patient, fu, tuple(f for f in FINDINGS if f in found), age, sex, view)
            )
    return specs


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as an 8-bit grayscale PNG.

    Pillow's encoder spends its time choosing row filters; the "Up" filter on every
    row plus zlib level 1 (RLE) is the same standard PNG (any reader, Pillow
    included, decodes it), faster and about as small. Measured by
    ``benchmarks/phantom_speed.py`` (200 phantoms at 256 px, one core of an AMD EPYC):
    png_bytes 0.62 ms/image, 37 KiB; Pillow compress_level=0 1.27 ms, 64 KiB;
    level=1 2.44 ms, 41 KiB; level=6 (default) 4.72 ms, 36 KiB. Drawing takes
    ~2.4 ms, so Pillow at a comparable size would cut ``synth`` from ~330 to ~200
    phantoms/s: the 30 lines pay for themselves.
    """
    h, w = image.shape
    raw = np.empty((h, w + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up
    raw[0, 1:] = image[0]
    np.subtract(image[1:], image[:-1], out=raw[1:, 1:])

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, grayscale, no interlace
    # Run-length matching suits row differences of smooth images: fastest and smallest.
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", packer.compress(raw.tobytes()) + packer.flush())
        + chunk(b"IEND", b"")
    )


def _render(args: tuple) -> list[tuple[str, int, int, int, int]]:
    """Draw and save one image (runs in a worker process when --workers > 1)."""
    spec, seed, size, images_dir, subtle_fraction = args
    anatomy = sample_anatomy(np.random.default_rng([seed, 3, spec.patient]))
    rng = np.random.default_rng([seed, 4, spec.index])
    if spec.followup:
        anatomy = anatomy.jitter(rng)
    image, boxes = make_phantom(rng, size, spec.findings, anatomy, subtle_fraction)
    (Path(images_dir) / spec.name).write_bytes(png_bytes(image))
    return boxes


def write_dataset(
    out,
    n: int,
    size: int = 256,
    seed: int = 0,
    config: PhantomConfig | None = None,
    workers: int = 1,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> Path:
    """Write ``n`` phantoms in NIH's layout under ``out``; returns ``out``; progress goes to ``reporter``.

    The result depends only on (n, size, seed, config), not on ``workers``.
    """
    import pandas as pd

    from cxrdx.imaging.letterbox import MIN_IMAGE_SIZE

    config = config or PhantomConfig()
    if int(n) < 1:
        raise ConfigError(f"synth: --n must be at least 1, got {n}")
    if int(size) < MIN_IMAGE_SIZE:
        raise ConfigError(f"synth: --size must be at least {MIN_IMAGE_SIZE} px, got {size}")
    if int(workers) < 1:
        raise ConfigError(f"synth: --workers must be at least 1, got {workers}")
    out = Path(out)
    images_dir = out / "images"
    entry = out / "Data_Entry.csv"
    if entry.exists() and not overwrite:
        raise ConfigError(
            f"synth: {entry} already exists; choose an empty --out folder or pass --overwrite "
            "(which deletes the old images first)"
        )
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"synth: cannot create {images_dir}: {exc}") from exc
    if overwrite:
        for old in images_dir.glob("*.png"):
            old.unlink()

    specs = plan_dataset(int(n), int(seed), config)
    tasks = [(spec, int(seed), int(size), str(images_dir), config.subtle_fraction) for spec in specs]
    reporter = reporter_or_default(reporter, "synth")
    if workers == 1:
        results = [_render(t) for t in reporter.progress(tasks, len(tasks), "synth")]
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(int(workers)) as pool:
            results = list(reporter.progress(pool.imap(_render, tasks, chunksize=16), len(tasks), "synth"))

    spacing = round(360.0 / size, 4)  # a ~36 cm field of view
    rows = [
        {
            "Image Index": spec.name,
            "Finding Labels": "|".join(spec.findings) or NO_FINDING,
            "Follow-up #": spec.followup,
            "Patient ID": spec.patient,
            "Patient Age": spec.age,
            "Patient Gender": spec.sex,
            "View Position": spec.view,
            "OriginalImage[Width": size,
            "Height]": size,
            "OriginalImagePixelSpacing[x": spacing,
            "y]": spacing,
        }
        for spec in specs
    ]
    pd.DataFrame(rows, columns=list(DATA_ENTRY_COLUMNS)).to_csv(entry, index=False)
    box_rows = [
        (spec.name, name, x, y, w, h)
        for spec, boxes in zip(specs, results, strict=True)
        for name, x, y, w, h in boxes
    ]
    pd.DataFrame(box_rows, columns=list(BBOX_COLUMNS)).to_csv(out / "BBox_List.csv", index=False)
    # the marker cxrdx.data.origin reads (MARKER_FILE): models trained on these images say "phantom"
    marker = {"dataset": "cxrdx synthetic phantoms", "kind": "phantom", "n": int(n), "size": int(size),
              "seed": int(seed)}  # fmt: skip
    (out / "dataset.json").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return out
