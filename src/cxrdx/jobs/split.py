"""``split``: a patient-level train/val/test split of a label table, written as generic CSVs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrdx.errors import ConfigError
from cxrdx.jobs.label_options import blank, keep_mixed_no_finding, mixed_no_finding
from cxrdx.options import option
from cxrdx.reporter import Reporter, reporter_or_default


@dataclass
class Config:
    labels: Path = option(help="label table (.csv or .csv.gz)")
    out: Path = option(help="output folder")
    val: float = option(0.1, help="fraction of images for validation")
    test: float = option(0.2, help="fraction of images for test")
    seed: int = option(0, help="shuffle seed")
    official_test: Path | None = option(None, help="NIH test_list.txt")
    official_train_val: Path | None = option(None, help="NIH train_val_list.txt")
    images: Path | None = option(None, help="images folder (needed only with --absolute-paths)")
    absolute_paths: bool = option(False, help="also write each image's absolute path")
    blank: str = blank()  # applied when the files are written: they hold 0 or blank, not "not mentioned"
    keep_mixed_no_finding: bool = keep_mixed_no_finding()


@dataclass
class SplitCounts:
    """One split: its file, images, patients and positives per finding the table labels."""

    path: Path
    images: int
    patients: int
    positives: dict[str, int]


@dataclass
class Result:
    splits: dict[str, SplitCounts]  # train, val, test (in that order)
    findings: list[str]  # the findings the table labels
    no_positives: list[str]  # "Finding in split" where AUROC is undefined
    n_images: int  # in the table read


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.data.columns import _few
    from cxrdx.data.splits import split_by_patient
    from cxrdx.data.tables import read_label_table, table_findings, write_labels

    reporter = reporter_or_default(reporter, "split")
    if config.absolute_paths and config.images is None:
        raise ConfigError("split: `absolute_paths` needs `images` DIR to find the files")
    table = read_label_table(
        config.labels,
        config.images,
        require_images=config.absolute_paths,
        mixed_no_finding=mixed_no_finding(config),
        blank=config.blank,
    )
    df = table.frame
    splits = split_by_patient(
        df, config.val, config.test, config.seed, config.official_test, config.official_train_val
    )
    findings = list(table_findings(table))  # the findings this table labels (partial labels)
    counts = {}
    for name, part in splits.items():
        path = config.out / f"{name}.csv"
        write_labels(table.with_frame(part), path, absolute_paths=config.absolute_paths)
        counts[name] = SplitCounts(
            path, len(part), int(part["patient"].nunique()), {f: int((part[f] == 1).sum()) for f in findings}
        )
    empty = [f"{f} in {k}" for k, c in counts.items() if c.images for f in findings if c.positives[f] == 0]
    if empty:
        reporter.warn(f"no positives for {_few(empty, 8)}; AUROC is undefined there")
    return Result(counts, findings, empty, len(df))
