"""``stats``: images, patients, views and per finding positives/negatives/uncertain/unlabelled of a label table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrdx.jobs.label_options import blank, keep_mixed_no_finding, mixed_no_finding
from cxrdx.options import option
from cxrdx.reporter import Reporter
from cxrdx.settings import DATASETS


@dataclass
class Config:
    labels: Path = option(help="label table (.csv or .csv.gz)")
    dataset: str | None = option(None, choices=DATASETS, help="the table's layout (default: detected)")
    images: Path | None = option(None, help="images folder: also count how many files are found")
    views: str | None = option(
        None, help="count only these views: frontal, all (default) or a list like PA,AP"
    )
    vindr_rule: str = option(
        "any",
        choices=("any", "majority"),
        help="VinDr-CXR: a finding is positive when any or most readers marked it",
    )
    plot: Path | None = option(None, help="write a bar plot PNG here")
    unmapped: Path | None = option(
        None,
        help="where to write every source term that has no cxrdx finding, with its image count "
        "(PadChest; default: LABELS-NAME.unmapped_terms.csv in the current folder)",
    )
    blank: str = blank()
    keep_mixed_no_finding: bool = keep_mixed_no_finding()


@dataclass
class Result:
    labels: Path
    table_format: str  # the layout read (nih, chexpert, ...)
    stats: dict[str, Any]  # cxrdx.data.stats.label_stats
    notes: list[str] = field(default_factory=list)
    views_dropped: dict[str, int] | None = None  # view -> images left out, when `views` filtered
    blank_labels: int = 0  # "not mentioned" cells read by the `blank` policy
    unmapped: Path | None = None  # the file listing source terms with no cxrdx finding, when there were any
    unmapped_terms: int = 0
    plot: Path | None = None


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.data.stats import label_stats, plot_prevalence
    from cxrdx.data.tables import read_label_table

    table = read_label_table(
        config.labels,
        config.images,
        mixed_no_finding=mixed_no_finding(config),
        dataset=config.dataset,
        uncertain="keep",
        views=config.views,
        vindr_rule=config.vindr_rule,
        blank=config.blank,
    )
    stats = label_stats(table)
    result = Result(
        labels=config.labels,
        table_format=table.format,
        stats=stats,
        notes=list(table.notes),
        views_dropped=dict(table.views.dropped) if table.views is not None else None,
        blank_labels=table.blank_labels,
    )
    terms = table.unmapped_terms
    if terms:
        from cxrdx.data.stats import write_unmapped

        stem = config.labels.name.removesuffix(".gz").removesuffix(".csv")
        result.unmapped = write_unmapped(terms, config.unmapped or Path(f"{stem}.unmapped_terms.csv"))
        result.unmapped_terms = len(terms)
    if config.plot is not None:
        ordered = sorted(stats["per_finding"].items(), key=lambda kv: (-kv[1]["positives"], kv[0]))
        name = config.labels.name
        result.plot = plot_prevalence(
            {name: {f: c["prevalence"] for f, c in ordered}},
            config.plot,
            title=f"{name}: {stats['images']:,} images, {stats['patients']:,} patients"
            + ("" if stats["no_finding"] is None else f", {stats['no_finding']:,} No Finding"),
            counts=stats["positives"],
        )
    return result
