"""The parts of a ``--engine ray`` run merged into one CSV, JSON Lines or Parquet file, each image once.

A part is a JSON Lines file written by ``cxrdx.inference.stream.ResultStream`` (complete rows
up to a possible torn last line, which is left out). The merge writes ``OUT`` atomically: with
``--resume`` the complete rows of an earlier ``OUT`` first, then every part's rows whose image is
not there yet (a row is never written twice), in the columns of ``cxrdx predict --format FMT``.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from cxrdx.errors import ConfigError
from cxrdx.files import atomic_write
from cxrdx.inference.formats import csv_columns, csv_row
from cxrdx.inference.prediction import Prediction
from cxrdx.inference.stream import read_done
from cxrdx.integrations.ray import prediction_from_record, result_columns

PARQUET_CHUNK = 4096  # rows per Parquet row group written by the merge


def part_files(parts: Path) -> list[Path]:
    return sorted(parts.glob("run-*.jsonl")) if parts.is_dir() else []


def parts_done(parts: Path) -> set[str]:
    """The images the parts of earlier runs hold (complete rows only)."""
    done: set[str] = set()
    for part in part_files(parts):
        done |= read_done(part, "jsonl", None)[0]
    return done


def read_out_done(
    out: Path, fmt: str, labels: Sequence[str], thresholds: dict[str, float] | None, tta: bool
) -> set[str]:
    """The images an earlier merged ``OUT`` holds."""
    if not out.is_file():
        return set()
    if fmt == "parquet":
        return set(_read_parquet(out, ["image"]).column("image").to_pylist())
    columns = csv_columns(labels, thresholds, tta) if fmt == "csv" else None
    return read_done(out, fmt, columns)[0]


def _read_parquet(path: Path, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"--resume {path}: not a Parquet file written by `cxrdx predict` ({exc}); use another --out"
        ) from None


def _records(part: Path) -> Iterator[Prediction]:
    """The part's complete rows, line by line (a part of millions of rows is never held whole)."""
    end = read_done(part, "jsonl", None)[1]
    offset = 0
    with open(part, "rb") as fh:
        for line in fh:
            offset += len(line)
            if offset > end:
                return
            yield prediction_from_record(json.loads(line))


def merge_parts(
    parts: Path,
    out: Path,
    fmt: str,
    labels: Sequence[str],
    thresholds: dict[str, float] | None,
    tta: bool,
    keep_out: bool,
) -> int:
    """Write ``out`` from the parts (after ``out``'s own rows when ``keep_out``), remove the parts; rows written."""
    keep_out = keep_out and out.is_file()
    seen: set[str] = set()
    count = 0

    def fresh() -> Iterator[Prediction]:
        nonlocal count
        for part in part_files(parts):
            for pred in _records(part):
                if pred.source not in seen:
                    seen.add(pred.source)
                    count += 1
                    yield pred

    if fmt == "parquet":
        atomic_write(
            out,
            lambda tmp: _write_parquet(tmp, out if keep_out else None, fresh, seen, labels, thresholds, tta),
        )
    else:
        columns = csv_columns(labels, thresholds, tta) if fmt == "csv" else None

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8", newline="") as dst:
                writer = csv.writer(dst, lineterminator="\n")
                end = 0
                if keep_out:
                    old, end = read_done(out, fmt, columns)
                    seen.update(old)
                    _copy_head(out, end, dst)
                if fmt == "csv" and (not keep_out or end == 0):
                    writer.writerow(columns)
                for pred in fresh():
                    if fmt == "csv":
                        writer.writerow(csv_row(pred, labels, thresholds, tta))
                    else:
                        dst.write(json.dumps(pred.to_dict()) + "\n")

        atomic_write(out, write)
    shutil.rmtree(parts, ignore_errors=True)
    return count


def _copy_head(path: Path, end: int, dst) -> None:
    """Append the first ``end`` bytes of ``path`` (its complete rows) to the text file ``dst``, in chunks."""
    dst.flush()
    with open(path, "rb") as src:
        while end > 0:
            chunk = src.read(min(1 << 20, end))
            if not chunk:
                break
            dst.buffer.write(chunk)
            end -= len(chunk)
    dst.buffer.flush()


def parquet_schema(labels: Sequence[str], thresholds: dict[str, float] | None, tta: bool):
    """The Parquet columns: those of ``--format csv``, typed (probabilities float64, calls bool)."""
    import pyarrow as pa

    fields = [pa.field("image", pa.string()), pa.field("error", pa.string())]
    fields += [pa.field(n, pa.float64()) for n in labels]
    fields += [pa.field(f"{n}_positive", pa.bool_()) for n in labels if thresholds and n in thresholds]
    fields += [pa.field(f"{n}_uncertainty", pa.float64()) for n in labels] if tta else []
    fields += [
        pa.field("calibration", pa.string()),
        pa.field("ood_score", pa.float64()),
        pa.field("in_distribution", pa.bool_()),
        pa.field("warnings", pa.string()),
    ]
    return pa.schema(fields)


def parquet_table(preds: Sequence[Prediction], labels, thresholds, tta):
    """Predictions as a table of ``parquet_schema`` (missing values are nulls)."""
    import pyarrow as pa

    schema = parquet_schema(labels, thresholds, tta)
    cols = result_columns(preds, labels, thresholds, tta)
    arrays = []
    for f in schema:
        values = cols[f.name].tolist()
        if pa.types.is_floating(f.type):
            values = [None if v != v else v for v in values]  # NaN: no value
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _write_parquet(tmp, old: Path | None, fresh, seen: set[str], labels, thresholds, tta) -> None:
    import pyarrow.parquet as pq

    schema = parquet_schema(labels, thresholds, tta)
    with pq.ParquetWriter(tmp, schema) as writer:
        if old is not None:
            table = _read_parquet(old)
            if table.schema.names != schema.names:
                raise ConfigError(
                    f"--resume {old}: its columns are not the ones this run writes (another model, "
                    "--tta or thresholds?); use another --out, or drop --resume to start afresh"
                )
            seen.update(table.column("image").to_pylist())
            writer.write_table(table.cast(schema))
        chunk: list[Prediction] = []
        for pred in fresh():
            chunk.append(pred)
            if len(chunk) >= PARQUET_CHUNK:
                writer.write_table(parquet_table(chunk, labels, thresholds, tta))
                chunk = []
        if chunk:
            writer.write_table(parquet_table(chunk, labels, thresholds, tta))
