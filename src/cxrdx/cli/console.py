"""The CLI's reporter: ``cxrdx CMD: ...`` lines and tqdm bars on stderr (stdout holds results only)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from cxrdx.reporter import Reporter

T = TypeVar("T")


class ConsoleReporter(Reporter):
    """Notes and warnings as prefixed lines on stderr; progress as a tqdm bar unless ``bars`` is off."""

    def __init__(self, command: str, bars: bool = True, stream=None, prefix: str | None = None) -> None:
        super().__init__(f"cxrdx.{command}")
        self.prefix = f"cxrdx {command}: " if prefix is None else prefix
        self.bars = bars
        self.stream = stream

    bars: bool

    def _write(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def note(self, message: str) -> None:
        self._write(self.prefix + message)

    def warn(self, message: str) -> None:
        self._write(f"{self.prefix}WARNING: {message}")

    def progress(self, items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
        if not self.bars:
            yield from items
            return
        from tqdm import tqdm

        yield from tqdm(
            items, total=total, desc=desc, file=self.stream or sys.stderr, dynamic_ncols=True, leave=False
        )
