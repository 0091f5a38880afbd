"""Settings shared by the jobs that read a label table, defined once."""

from __future__ import annotations

from typing import Any

from cxrdx.options import option
from cxrdx.settings import BLANK_HELP, BLANK_POLICIES


def keep_mixed_no_finding() -> Any:
    """The ``keep_mixed_no_finding`` field (``--keep-mixed-no-finding``)."""
    return option(
        False,
        help="accept 'Finding Labels' cells that mix 'No Finding' with findings (e.g. 'No Finding|Effusion'): "
        "keep the findings, drop 'No Finding', and warn with the count (default: such a cell is an error)",
    )


def mixed_no_finding(config: Any) -> str:
    """The ``read_labels(mixed_no_finding=...)`` value the setting asks for."""
    return "keep" if config.keep_mixed_no_finding else "error"


def blank() -> Any:
    """The ``blank`` field (``--blank``): what a CheXpert / MIMIC-CXR "not mentioned" cell means."""
    return option("negative", choices=BLANK_POLICIES, help=BLANK_HELP)
