"""``synth``: a synthetic chest phantom dataset in NIH's layout, whose findings and boxes are known exactly."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cxrdx.options import option
from cxrdx.reporter import Reporter, reporter_or_default


@dataclass
class Config:
    out: Path = option(help="output folder (created)")
    n: int = option(1000, help="number of images")
    image_size: int = option(256, help="image side in pixels", aliases=("--size",))
    seed: int = option(0, help="random seed; same seed, same bytes")
    prevalence_scale: float = option(
        1.0, help="multiply every finding's prevalence (1.0: each 4-11%, ~45% No Finding)"
    )
    workers: int = option(1, help="processes (output does not depend on it)")
    overwrite: bool = option(False, help="replace an existing dataset in --out")


@dataclass
class Result:
    """What was written: counts per finding (images with it, lesion boxes of it)."""

    out: Path
    n_images: int
    n_patients: int
    images: dict[str, int] = field(default_factory=dict)  # finding (and "No Finding") -> images with it
    boxes: dict[str, int] = field(default_factory=dict)  # finding -> boxes
    seconds: float = 0.0


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.phantom.config import PhantomConfig
    from cxrdx.phantom.dataset import write_dataset

    reporter = reporter_or_default(reporter, "synth")
    t0 = time.perf_counter()
    out = write_dataset(
        config.out,
        config.n,
        config.image_size,
        config.seed,
        PhantomConfig(prevalence_scale=config.prevalence_scale),
        config.workers,
        overwrite=config.overwrite,
        reporter=reporter,
    )
    result = summarize(out)
    result.seconds = time.perf_counter() - t0
    return result


def summarize(out: Path) -> Result:
    """The counts of a written phantom dataset, read back from its CSVs."""
    import pandas as pd

    entry = pd.read_csv(out / "Data_Entry.csv")
    boxes = pd.read_csv(out / "BBox_List.csv")
    counts = entry["Finding Labels"].str.split("|").explode().value_counts()
    return Result(
        out=Path(out),
        n_images=len(entry),
        n_patients=int(entry["Patient ID"].nunique()),
        images={str(k): int(v) for k, v in counts.items()},
        boxes={str(k): int(v) for k, v in boxes["Finding Label"].value_counts().items()},
    )
