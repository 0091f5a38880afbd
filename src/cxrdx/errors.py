"""Errors a user can act on.

Every failure that reaches a person is a ``CxrdxError`` whose message alone says
which file or setting is wrong, what is wrong with it, and what to do. The CLI
prints the message (no traceback) and exits non-zero; the app shows it in the page.
"""

from __future__ import annotations


class CxrdxError(Exception):
    """Base class: the message is complete and meant for the user."""


class LabelError(CxrdxError):
    """An unknown or malformed finding name."""


class ImageReadError(CxrdxError):
    """A file that cannot be read as a chest X-ray image."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class DataError(CxrdxError):
    """A label table, split or cache that is missing, malformed or inconsistent."""


class CheckpointError(CxrdxError):
    """A weights file that is missing, corrupt, untrusted or does not match its metadata."""


class ConfigError(CxrdxError):
    """A setting that cannot work (bad value, impossible combination)."""
