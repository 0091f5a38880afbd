"""Predictions streamed to a file as they are made (CSV or JSON Lines), and resuming such a file.

Archive scale: ``cxrdx predict`` on millions of films keeps no results in memory. Rows are
buffered for one batch, then written with one ``write``, flushed and fsync'ed, so a crash
loses at most the batch in flight and the file up to its last complete row stays a valid
CSV / JSON Lines file. ``--resume`` reads the images already in the file (cutting off a row
a crash left half-written) and the run skips them. The file is read line by line: resuming
holds only the set of image names, never the rows.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from cxrdx.errors import ConfigError, CxrdxError
from cxrdx.inference.formats import csv_columns, csv_row
from cxrdx.inference.prediction import Prediction
from cxrdx.spreadsheet import csv_line, original_cell

STREAM_FORMATS = ("csv", "jsonl")


class ResultStream:
    """Append predictions to ``path`` (or stdout when ``path`` is None), one fsync'ed write per batch.

    ``resume``: keep the complete rows already in ``path`` (``done`` holds their images) and
    append after them; otherwise the file is started afresh.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        fmt: str,
        labels: Sequence[str],
        thresholds: dict[str, float] | None,
        tta: bool,
        resume: bool = False,
    ) -> None:
        if fmt not in STREAM_FORMATS:
            raise ConfigError(f"streamed output is {' or '.join(STREAM_FORMATS)}, not {fmt!r}")
        self.path = None if path is None else Path(path)
        self.fmt, self.labels, self.thresholds, self.tta = fmt, list(labels), thresholds, tta
        self.columns = csv_columns(self.labels, thresholds, tta) if fmt == "csv" else None
        self.done: set[str] = set()
        self.written = 0  # rows written by this run
        self._pending: list[str] = []
        self._fh: IO[bytes] | None = None
        if self.path is None:
            if self.columns:
                self._pending.append(_csv_line(self.columns))
            return
        end = 0
        if resume and self.path.is_file():
            self.done, end = read_done(self.path, fmt, self.columns)
        try:
            self._fh = open(self.path, "r+b" if end else "wb")  # noqa: SIM115 - held for the whole run
            self._fh.truncate(end)  # a half-written last row (a crash mid-batch) is dropped
            self._fh.seek(end)
        except OSError as exc:
            raise CxrdxError(
                f"cannot write {self.path} ({exc.strerror or exc}): is the disk full or the folder "
                "read-only? Choose another --out"
            ) from None
        if end == 0 and self.columns:
            self._pending.append(_csv_line(self.columns))
            self.flush()

    def add(self, pred: Prediction) -> None:
        if self.fmt == "csv":
            self._pending.append(_csv_line(csv_row(pred, self.labels, self.thresholds, self.tta)))
        else:
            self._pending.append(json.dumps(pred.to_dict()) + "\n")
        self.written += 1

    def flush(self) -> None:
        """Write the buffered rows in one go, then flush and fsync (the batch is now safe)."""
        if not self._pending:
            return
        data = "".join(self._pending)
        self._pending.clear()
        if self._fh is None:
            sys.stdout.write(data)
            sys.stdout.flush()
            return
        try:
            self._fh.write(data.encode("utf-8"))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise CxrdxError(
                f"cannot write {self.path} ({exc.strerror or exc}): is the disk full? The rows before "
                "this batch are safe; free some space and rerun with --resume"
            ) from None

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResultStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
            return
        # an error or Ctrl-C: the buffered rows are complete predictions, so they are kept if possible
        with contextlib.suppress(CxrdxError):
            self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _csv_line(row: Sequence[object]) -> str:
    return csv_line(row)


def read_done(path: Path, fmt: str, columns: Sequence[str] | None) -> tuple[set[str], int]:
    """Images already in a streamed file, and the byte length of its complete rows.

    A torn tail (a line without its newline, a quoted CSV field cut short, a JSON line that
    does not parse) is not counted: a crash tears at most the last record. Anything else that
    cannot be read (complete rows after it, or two unreadable records) is an error and the file
    is left alone, since it is not a file this command wrote (a JSON array, another CSV ...).
    """
    done: set[str] = set()
    with open(path, "rb") as fh:
        rows = _csv_records(fh) if fmt == "csv" else _jsonl_records(fh)
        end, bad_at = 0, None
        for number, record, offset in rows:
            if fmt == "csv" and number == 1 and record is not None:  # the header
                if list(record) != list(columns or []):
                    raise ConfigError(
                        f"--resume {path}: its columns are not the ones this run writes (another "
                        "model, --tta or thresholds?); use another --out, or drop --resume to start afresh"
                    )
                end = offset
                continue
            if fmt == "csv" and record is not None and len(record) != len(columns or []):
                record = None
            if bad_at is not None:
                raise ConfigError(
                    f"--resume {path}: line {bad_at} cannot be read and more lines follow it, so this is "
                    f"not a {fmt} file written by `cxrdx predict` (left as it is); use another --out"
                )
            if record is None:
                bad_at = number
                continue
            done.add(original_cell(record[0]) if fmt == "csv" else record["image"])  # as written: safe_cell
            end = offset
    return done, end


def _complete_lines(fh: IO[bytes]) -> Iterator[tuple[str, int]]:
    """(line, offset after it) for every newline-terminated line; a torn last line is left out."""
    offset = 0
    for raw in fh:
        if not raw.endswith(b"\n"):
            return
        offset += len(raw)
        try:
            yield raw.decode("utf-8"), offset
        except UnicodeDecodeError:
            yield "\x00", offset  # unreadable: reported by the caller as a bad line


def _csv_records(fh: IO[bytes]) -> Iterator[tuple[int, list[str] | None, int]]:
    """(line number, row or None when unreadable, offset after it) per CSV record."""
    state = {"offset": 0, "line": 0}

    def lines() -> Iterator[str]:
        for text, offset in _complete_lines(fh):
            state["offset"], state["line"] = offset, state["line"] + 1
            yield text

    reader = csv.reader(lines(), strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:  # a quoted field cut short at the end, or not CSV at all
            yield state["line"], None, state["offset"]
            return
        ok = bool(row) and "\x00" not in row[0] and row[0] != ""
        yield state["line"], (row if ok else None), state["offset"]


def _jsonl_records(fh: IO[bytes]) -> Iterator[tuple[int, dict | None, int]]:
    for number, (text, offset) in enumerate(_complete_lines(fh), start=1):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            record = None
        yield number, record, offset
