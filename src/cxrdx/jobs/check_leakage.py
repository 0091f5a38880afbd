"""``check_leakage``: which patients (and images) are in more than one label table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrdx.errors import ConfigError
from cxrdx.options import option
from cxrdx.reporter import Reporter


@dataclass
class Config:
    tables: list[Path] = option(
        positional=True, metavar="tables", help="two or more label tables (e.g. train.csv val.csv test.csv)"
    )
    show: int = option(10, help="how many leaking patients to name")


@dataclass
class Result:
    n_tables: int
    n_patients: int  # summed over the tables
    patients: dict[str, list[str]]  # patient -> the tables holding it (only those in more than one)
    images: dict[str, list[str]]  # image -> the tables holding it (only those in more than one)

    @property
    def leaks(self) -> bool:
        return bool(self.patients or self.images)


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.data.leakage import find_image_overlap, find_leaks
    from cxrdx.data.tables import read_labels

    if len(config.tables) < 2:
        raise ConfigError("check-leakage: give at least two label tables to compare")
    if len({str(t) for t in config.tables}) < len(config.tables):
        raise ConfigError("check-leakage: the same file is given twice")
    tables = {str(t): read_labels(t) for t in config.tables}
    return Result(
        n_tables=len(tables),
        n_patients=sum(int(t["patient"].nunique()) for t in tables.values()),
        patients=find_leaks(tables),
        images=find_image_overlap(tables),
    )
