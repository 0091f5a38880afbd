"""``Reporter``: how a job tells the person running it what it does (notes, warnings, progress).

ONE channel for every job. The default, for Python users, goes to ``logging`` (logger
``cxrdx.<job>``; configure it as any library's) and shows no bars; the CLI passes its
console reporter (``cxrdx.cli.console``: ``cxrdx CMD:`` lines (``cxrdx CMD: WARNING:`` for warnings) and tqdm bars on stderr).
Library code never prints: it takes a ``reporter`` and calls these three methods.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Reporter:
    """Notes and warnings to ``logging``; ``progress`` passes the items through unchanged."""

    bars = False  # whether progress bars are wanted (library code that draws its own bar asks this)

    def __init__(self, name: str = "cxrdx") -> None:
        self.name = name
        self.log = logging.getLogger(name if name.startswith("cxrdx") else f"cxrdx.{name}")

    def note(self, message: str) -> None:
        """Something the user may want to know (what was written, what was chosen)."""
        self.log.info(message)

    def warn(self, message: str) -> None:
        """Something that probably is not what the user wanted, though the job goes on."""
        self.log.warning(message)

    def progress(self, items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
        """Iterate ``items``; a console reporter draws a bar, this one does not."""
        yield from items


def reporter_or_default(reporter: Reporter | None, name: str) -> Reporter:
    """``reporter``, or the logging one named after the job."""
    return reporter if reporter is not None else Reporter(name)
