"""Options shared by the subcommands that read a label table."""

from __future__ import annotations

import argparse


def add_mixed_no_finding(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-mixed-no-finding",
        action="store_true",
        help="accept 'Finding Labels' cells that mix 'No Finding' with findings (e.g. 'No Finding|Effusion'): "
        "keep the findings, drop 'No Finding', and warn with the count (default: such a cell is an error)",
    )


def mixed_no_finding(args: argparse.Namespace) -> str:
    """The ``read_labels(mixed_no_finding=...)`` value the flag asks for."""
    return "keep" if args.keep_mixed_no_finding else "error"


def add_blank(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--blank",
        choices=("negative", "unlabelled"),
        default="negative",
        help="CheXpert / MIMIC-CXR cells the labeler left blank ('not mentioned') on a row that is not "
        "No Finding: negative (default; the CheXpert paper's baselines) or unlabelled (masked). Blanks "
        "on a No Finding row are always negative",
    )
