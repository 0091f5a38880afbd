"""``prepare``: decode and letterbox every listed image once into a memory-mapped uint8 cache for training.

Resumable (rerun the same call: finished images are kept). Images listed but not found stop the
job (listed in ``OUT/not_cached.csv``) unless ``allow_missing``; unreadable ones are skipped,
counted and listed. The result is ``cxrdx.data.prepare.PrepareResult``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrdx.jobs.label_options import keep_mixed_no_finding, mixed_no_finding
from cxrdx.options import option
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.settings import IMAGE_SIZE

if TYPE_CHECKING:
    from cxrdx.data.prepare import PrepareResult as Result


@dataclass
class Config:
    labels: list[Path] = option(
        metavar="CSV", help="label table(s), e.g. the train.csv val.csv test.csv written by `cxrdx split`"
    )
    out: Path = option(metavar="CACHE", help="cache folder to create (or resume)")
    images: Path | None = option(
        None, metavar="DIR", help="folder the image names in the CSVs are relative to"
    )
    image_size: int = option(IMAGE_SIZE, help="square side in pixels", aliases=("--size",))
    workers: int | None = option(None, help="decoding processes (default: CPU count, at most 8)")
    overwrite: bool = option(False, help="replace an existing cache in --out")
    allow_patient_overlap: bool = option(
        False, help="cache splits that share a patient (refused by default; recorded in cache.json)"
    )
    allow_missing: bool = option(
        False, help="cache the images that are there when some listed ones are not (e.g. a partial download)"
    )
    keep_mixed_no_finding: bool = keep_mixed_no_finding()


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.data.prepare import prepare_cache

    reporter = reporter_or_default(reporter, "prepare")
    result = prepare_cache(
        labels=config.labels,
        out=config.out,
        size=config.image_size,
        images=config.images,
        workers=config.workers,
        progress=reporter.bars,
        overwrite=config.overwrite,
        mixed_no_finding=mixed_no_finding(config),
        allow_patient_overlap=config.allow_patient_overlap,
        allow_missing=config.allow_missing,
        reporter=reporter,
    )
    if result.leakage:
        reporter.warn(f"{result.leakage}; allowed by `allow_patient_overlap` (recorded in the cache)")
    return result
